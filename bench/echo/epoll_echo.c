/* Minimal epoll echo server: the baseline of the echo benchmark (see run.sh).
 *
 * usage: epoll_echo PORT   (0 = any free port)
 * Listens on 127.0.0.1, prints "listening PORT" once it does, and echoes
 * every connection until killed.
 *
 * Level-triggered, one read per readiness event into a single static buffer,
 * written straight back. Only when the kernel does not take all of it is the
 * remainder copied into the connection; the connection then stops reading and
 * waits for EPOLLOUT until the remainder is gone (backpressure).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* asyncio's (and Conduit's) read size. */
static char buffer[256 * 1024];

struct conn {
    int fd;
    char *pending; /* unwritten remainder of an echo, or NULL */
    size_t pending_len;
    size_t pending_off;
};

static int ep;
/* Kept open so that when accept() fails with EMFILE, we can close it, accept
 * and drop the connection, and reopen it. Otherwise the listening socket
 * stays readable and a level-triggered loop spins. */
static int spare_fd;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void close_conn(struct conn *c) {
    close(c->fd); /* also removes it from the epoll set */
    free(c->pending);
    free(c);
}

static void watch(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl");
}

static void on_writable(struct conn *c) {
    ssize_t n = send(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) close_conn(c);
        return;
    }
    c->pending_off += (size_t)n;
    if (c->pending_off < c->pending_len) return;
    free(c->pending);
    c->pending = NULL;
    watch(c, EPOLLIN);
}

static void on_readable(struct conn *c) {
    ssize_t n = recv(c->fd, buffer, sizeof buffer, 0);
    if (n <= 0) {
        /* EOF: everything read so far has been echoed, since we do not read
         * while a remainder is pending. */
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) close_conn(c);
        return;
    }
    ssize_t w = send(c->fd, buffer, (size_t)n, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            close_conn(c);
            return;
        }
        w = 0;
    }
    if (w == n) return;
    c->pending_len = (size_t)(n - w);
    c->pending_off = 0;
    c->pending = malloc(c->pending_len);
    if (!c->pending) die("malloc");
    memcpy(c->pending, buffer + w, c->pending_len);
    watch(c, EPOLLOUT);
}

static void accept_all(int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN) return;
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "epoll_echo: out of file descriptors, dropping a connection\n");
                close(spare_fd);
                fd = accept(listener, NULL, NULL);
                if (fd >= 0) close(fd);
                spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            die("accept4");
        }
        /* Echoes go out as soon as they are written, like asyncio/Conduit. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: epoll_echo PORT   (0 = any free port)\n");
        return 2;
    }
    char *end;
    long port = strtol(argv[1], &end, 10);
    if (*end != '\0' || end == argv[1] || port < 0 || port > 65535) {
        fprintf(stderr, "epoll_echo: bad port '%s'\n", argv[1]);
        return 2;
    }

    /* One descriptor per connection: allow as many as the hard limit does. */
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0) die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind");
    if (listen(listener, SOMAXCONN) != 0) die("listen");
    socklen_t len = sizeof addr;
    if (getsockname(listener, (struct sockaddr *)&addr, &len) != 0) die("getsockname");
    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    /* data.ptr NULL marks the listening socket. */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev) != 0) die("epoll_ctl");

    struct epoll_event events[256];
    for (;;) {
        int ready = epoll_wait(ep, events, 256, -1);
        if (ready < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            /* Act on the connection's state, whatever the event bits say:
             * errors and hangups surface from the recv/send itself. */
            if (!c)
                accept_all(listener);
            else if (c->pending)
                on_writable(c);
            else
                on_readable(c);
        }
    }
}
