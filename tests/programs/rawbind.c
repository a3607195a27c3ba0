/* rawbind.c: a server whose socket() and bind() are raw system calls (as a runtime with its own
 * syscalls makes them) while listen(), accept4() and getpeername() go through libc, i.e. through
 * the layer. The seccomp supervisor binds such a socket and keeps what only it knows (the pod's
 * port, the real client), so the layer must leave those libc calls unmarked. Serves one HTTP
 * request on the port given as the only argument and prints the client accept and getpeername
 * show. Run under mirrord by tests/tests/syscalls.rs. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    int fd = (int)syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(argv[1]));
    if (syscall(SYS_bind, fd, &sa, sizeof sa) != 0) {
        perror("bind");
        return 1;
    }
    if (listen(fd, 16) != 0) {
        perror("listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 30000) != 1) {
        fprintf(stderr, "no connection\n");
        return 1;
    }
    struct sockaddr_in from;
    socklen_t from_len = sizeof from;
    int conn = accept4(fd, (struct sockaddr *)&from, &from_len, 0);
    if (conn < 0) {
        perror("accept4");
        return 1;
    }
    struct sockaddr_in peer;
    socklen_t peer_len = sizeof peer;
    if (getpeername(conn, (struct sockaddr *)&peer, &peer_len) != 0) {
        perror("getpeername");
        return 1;
    }
    char a[INET_ADDRSTRLEN] = "?", b[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &from.sin_addr, a, sizeof a);
    inet_ntop(AF_INET, &peer.sin_addr, b, sizeof b);
    char req[4096];
    read(conn, req, sizeof req);
    const char *resp = "HTTP/1.1 200 OK\r\nX-Served-By: local-c\r\nContent-Length: 8\r\n"
                       "Connection: close\r\n\r\nraw-bind";
    write(conn, resp, strlen(resp));
    printf("accept=%s getpeername=%s\n", a, b);
    fflush(stdout);
    close(conn);
    return 0;
}
