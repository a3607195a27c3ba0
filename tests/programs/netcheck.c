/* netcheck.c: TCP by IP, connected and unconnected UDP from a statically linked program (no LD_PRELOAD
 * reaches it). Run in the pod and under mirrord by tests/tests/syscalls.rs; one line per
 * check, compared between the two. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int open_to(int type, const char *ip, int port, struct sockaddr_in *sa) {
    int fd = socket(AF_INET, type, 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    inet_pton(AF_INET, ip, &sa->sin_addr);
    if (connect(fd, (struct sockaddr *)sa, sizeof *sa) != 0) {
        perror("connect");
        close(fd);
        return -1;
    }
    return fd;
}

static void print_peer(int fd) {
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    char ip[INET_ADDRSTRLEN] = "?";
    if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0) {
        perror("getpeername");
        return;
    }
    inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
    printf(" peer=%s:%d", ip, ntohs(peer.sin_port));
}

int main(void) {
    struct sockaddr_in sa;
    int fd = open_to(SOCK_STREAM, "10.96.0.50", 8080, &sa);
    if (fd < 0)
        return 1;
    const char *req = "GET / HTTP/1.0\r\nHost: payment-service\r\n\r\n";
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
        perror("write");
        return 1;
    }
    char buf[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    printf("tcp");
    print_peer(fd);
    printf(" body=%s", body ? body + 4 : "(none)\n");
    close(fd);

    fd = open_to(SOCK_DGRAM, "10.96.0.50", 9001, &sa);
    if (fd < 0)
        return 1;
    if (send(fd, "ping-c", 6, 0) != 6) {
        perror("send");
        return 1;
    }
    n = recv(fd, buf, sizeof buf - 1, 0);
    if (n < 0) {
        perror("recv");
        return 1;
    }
    buf[n] = 0;
    printf("udp");
    print_peer(fd);
    printf(" reply=%s\n", buf);
    close(fd);

    /* Unconnected: sendto with an address, recvfrom says who answered. */
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(9001);
    inet_pton(AF_INET, "10.96.0.50", &sa.sin_addr);
    if (sendto(fd, "ping-c-unconnected", 18, 0, (struct sockaddr *)&sa, sizeof sa) != 18) {
        perror("sendto");
        return 1;
    }
    struct sockaddr_in from;
    socklen_t from_len = sizeof from;
    n = recvfrom(fd, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &from_len);
    if (n < 0) {
        perror("recvfrom");
        return 1;
    }
    buf[n] = 0;
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &from.sin_addr, ip, sizeof ip);
    printf("udp-unconnected from=%s:%d reply=%s\n", ip, ntohs(from.sin_port), buf);
    close(fd);
    return 0;
}
