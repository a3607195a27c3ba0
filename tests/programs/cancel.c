/* cancel.c: blocking calls the layer makes itself stay cancellation points. A thread blocked in
 * accept() on a loopback listener, then one blocked in open() of a FIFO nobody writes to, is
 * cancelled with pthread_cancel; each must end as cancelled. Run under mirrord by
 * tests/tests/syscalls.rs (the layer then makes both calls as raw, marked system calls).
 * alarm(): a call that ignores the cancellation kills the program instead of hanging the test. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int listener;
static const char *fifo;

static void *blocked_in_accept(void *arg) {
    (void)arg;
    accept(listener, 0, 0);
    return 0;
}

static void *blocked_in_open(void *arg) {
    (void)arg;
    open(fifo, O_RDONLY);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    fifo = argv[1];
    if (mkfifo(fifo, 0600) != 0) {
        perror("mkfifo");
        return 1;
    }
    listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(listener, 1) != 0) {
        perror("listen");
        return 1;
    }
    alarm(10);
    void *(*body[2])(void *) = {blocked_in_accept, blocked_in_open};
    const char *name[2] = {"accept", "open"};
    for (int i = 0; i < 2; i++) {
        pthread_t t;
        void *ret = 0;
        pthread_create(&t, 0, body[i], 0);
        /* Long enough for the thread to be inside the call. */
        usleep(300000);
        pthread_cancel(t);
        pthread_join(t, &ret);
        printf("%s %s\n", name[i], ret == PTHREAD_CANCELED ? "cancelled" : "returned");
    }
    unlink(fifo);
    return 0;
}
