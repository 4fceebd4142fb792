/* Ping-pong load client for the echo benchmark (see run.sh).
 *
 * Load mode: open --connections TCP connections; on each, send a --size byte
 * message, wait until exactly that many bytes have come back (checking every
 * byte), then send the next. Stops at --duration seconds or --requests
 * requests, whichever comes first, and prints one line:
 *   requests=123456 seconds=5.00 errors=0
 * Requests still in flight at the deadline are not counted.
 *
 * Idle mode (--idle N): open N connections, send nothing, print
 * "idle_connected=K" (K = connections that succeeded), then hold them until
 * stdin reaches EOF or --hold seconds pass.
 *
 * Exit status: 0 on success, 1 if anything failed, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* How long all connects together may take before the rest count as failed. */
#define CONNECT_TIMEOUT_S 30.0
/* Connects in progress at once, and started per second at most (after an
 * initial burst). A server that accepts more slowly than we connect fills its
 * accept queue (asyncio's default backlog is only 100); the kernel then drops
 * SYNs, each costing the client a 1 s retransmit, and the dropped ones come
 * back together to overflow it again. 5000/s opens 10,000 connections in 2 s
 * and stays well below what the servers benchmarked here accept. */
#define MAX_PENDING_CONNECTS 256
#define CONNECT_RATE 5000.0
#define CONNECT_BURST 50
/* Messages start at a per-request offset into a pattern buffer this much
 * longer than the message, so consecutive requests carry different bytes. */
#define PATTERN_SLACK 256
#define MAX_ERROR_MESSAGES 10

struct options {
    const char *host;
    int port;
    long connections;
    long size;
    double duration;
    long long requests;
    long idle;
    double hold;
};

struct conn {
    int fd;
    long sent;         /* bytes of the current message written */
    long received;     /* bytes of its echo read back */
    unsigned offset;   /* where the current message starts in the pattern */
    uint32_t interest; /* events currently registered with epoll */
    int active;
};

static int error_messages;

static void report_error(const char *what, int err) {
    if (error_messages++ >= MAX_ERROR_MESSAGES) return;
    if (err)
        fprintf(stderr, "load_client: %s: %s\n", what, strerror(err));
    else
        fprintf(stderr, "load_client: %s\n", what);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* epoll_wait timeout in ms for a deadline: rounded up, so we never wake early
 * and spin. */
static int timeout_ms(double deadline) {
    double left = deadline - now();
    return left <= 0 ? 0 : (int)(left * 1000.0) + 1;
}

static void usage(void) {
    fprintf(stderr,
            "usage: load_client --port P [--host 127.0.0.1] [--connections 10] [--size 1024]\n"
            "                   [--duration 5] [--requests 1000000000]\n"
            "       load_client --port P [--host 127.0.0.1] --idle N [--hold 300]\n");
    exit(2);
}

static double parse_number(const char *text, double min, double max) {
    char *end;
    double value = strtod(text, &end);
    if (end == text || *end != '\0' || value < min || value > max) {
        fprintf(stderr, "load_client: bad number '%s' (allowed %g..%g)\n", text, min, max);
        exit(2);
    }
    return value;
}

static struct options parse_options(int argc, char **argv) {
    struct options o = {"127.0.0.1", 0, 10, 1024, 5.0, 1000000000LL, 0, 300.0};
    static const struct option long_options[] = {
        {"host", required_argument, NULL, 'h'},        {"port", required_argument, NULL, 'p'},
        {"connections", required_argument, NULL, 'c'}, {"size", required_argument, NULL, 's'},
        {"duration", required_argument, NULL, 'd'},    {"requests", required_argument, NULL, 'r'},
        {"idle", required_argument, NULL, 'i'},        {"hold", required_argument, NULL, 'H'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (opt) {
        case 'h': o.host = optarg; break;
        case 'p': o.port = (int)parse_number(optarg, 1, 65535); break;
        case 'c': o.connections = (long)parse_number(optarg, 1, 100000); break;
        case 's': o.size = (long)parse_number(optarg, 1, 64 << 20); break;
        case 'd': o.duration = parse_number(optarg, 0.01, 3600); break;
        case 'r': o.requests = (long long)parse_number(optarg, 1, 1e15); break;
        case 'i': o.idle = (long)parse_number(optarg, 1, 1000000); break;
        case 'H': o.hold = parse_number(optarg, 0, 86400); break;
        default: usage();
        }
    }
    if (optind != argc || o.port == 0) usage();
    return o;
}

/* Make room for `needed` descriptors, up to the hard limit. */
static void raise_nofile(rlim_t needed) {
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= needed) return;
    lim.rlim_cur = needed < lim.rlim_max ? needed : lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < needed)
        fprintf(stderr, "load_client: warning: only %llu file descriptors allowed, %llu wanted\n",
                (unsigned long long)lim.rlim_cur, (unsigned long long)needed);
}

/* Connects n sockets to addr, paced as described at CONNECT_RATE, within
 * CONNECT_TIMEOUT_S. fds[i] is the connected socket, or -1 if it failed.
 * Returns how many connected. */
static long connect_all(const struct sockaddr_in *addr, long n, int *fds) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    char *pending_flags = calloc((size_t)n, 1); /* 1 while fds[i] is still connecting */
    if (ep < 0 || !pending_flags) {
        report_error("connect setup", errno);
        exit(1);
    }
    const double start = now(), deadline = start + CONNECT_TIMEOUT_S;
    long started = 0, pending = 0, connected = 0;
    struct epoll_event events[MAX_PENDING_CONNECTS];

    for (long i = 0; i < n; i++) fds[i] = -1;
    while ((started < n || pending > 0) && now() < deadline) {
        long allowed = CONNECT_BURST + (long)((now() - start) * CONNECT_RATE);
        while (started < n && started < allowed && pending < MAX_PENDING_CONNECTS) {
            long i = started++;
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                report_error("socket", errno);
                continue;
            }
            /* Without it, the tail of a large message can sit in Nagle's
             * buffer waiting for an ACK. */
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0 && errno != EINPROGRESS) {
                report_error("connect", errno);
                close(fd);
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)i};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            fds[i] = fd;
            pending_flags[i] = 1;
            pending++;
        }
        /* Wake up for the next connect the rate allows, if one is due. */
        int timeout = started < n ? 1 : timeout_ms(deadline);
        int ready = epoll_wait(ep, events, MAX_PENDING_CONNECTS, timeout);
        if (ready < 0 && errno != EINTR) {
            report_error("epoll_wait", errno);
            break;
        }
        for (int k = 0; k < ready; k++) {
            long i = (long)events[k].data.u64;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &len);
            epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
            pending_flags[i] = 0;
            pending--;
            if (err == 0) {
                connected++;
            } else {
                report_error("connect", err);
                close(fds[i]);
                fds[i] = -1;
            }
        }
    }
    /* Out of time: whatever is still connecting has failed. */
    for (long i = 0; i < n; i++) {
        if (!pending_flags[i]) continue;
        report_error("connect", ETIMEDOUT);
        close(fds[i]);
        fds[i] = -1;
    }
    free(pending_flags);
    close(ep);
    return connected;
}

static int run_idle(const struct options *o, const struct sockaddr_in *addr) {
    int *fds = malloc(sizeof *fds * (size_t)o->idle);
    if (!fds) return 1;
    long connected = connect_all(addr, o->idle, fds);
    printf("idle_connected=%ld\n", connected);
    fflush(stdout);

    /* Hold the connections until stdin closes or the hold time runs out. */
    const double deadline = now() + o->hold;
    for (;;) {
        struct pollfd in = {.fd = 0, .events = POLLIN};
        int ready = poll(&in, 1, timeout_ms(deadline));
        if (ready == 0) break;
        if (ready < 0) {
            if (errno == EINTR) continue;
            break;
        }
        char discard[256];
        ssize_t n = read(0, discard, sizeof discard);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
    }
    for (long i = 0; i < o->idle; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(fds);
    return connected == o->idle ? 0 : 1;
}

/* State shared by the load-mode functions below. */
static struct {
    int ep;
    long size;
    unsigned char *pattern;
    unsigned char *readbuf;
    long readbuf_size;
    double deadline;
    long long cap;
    long long issued;
    long long completed;
    long in_flight;
    long errors;
} load;

static void set_interest(struct conn *c, uint32_t interest) {
    if (c->interest == interest) return;
    struct epoll_event ev = {.events = interest, .data.ptr = c};
    epoll_ctl(load.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->interest = interest;
}

/* The connection is done: no more requests on it. */
static void finish(struct conn *c) {
    epoll_ctl(load.ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->active = 0;
    load.in_flight--;
}

static void fail(struct conn *c, const char *what, int err) {
    report_error(what, err);
    load.errors++;
    finish(c);
    close(c->fd);
    c->fd = -1;
}

/* Writes as much of the current message as the socket takes; asks for
 * EPOLLOUT while some is left. Reading stays enabled throughout: the server
 * echoes while we are still sending, and if we stopped reading, both sides'
 * buffers would fill and deadlock. */
static void send_some(struct conn *c) {
    while (c->sent < load.size) {
        ssize_t n = send(c->fd, load.pattern + c->offset + c->sent, (size_t)(load.size - c->sent), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            fail(c, "send", errno);
            return;
        }
        c->sent += n;
    }
    set_interest(c, c->sent < load.size ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

static void start_request(struct conn *c) {
    load.issued++;
    c->sent = c->received = 0;
    c->offset = (c->offset + 1) % PATTERN_SLACK;
    send_some(c);
}

static void receive_some(struct conn *c) {
    long want = load.size - c->received;
    if (want > load.readbuf_size) want = load.readbuf_size;
    /* Never ask for more than the echo still owed: extra bytes would be the
     * server's bug, and they then fail the next request's check. */
    ssize_t n = recv(c->fd, load.readbuf, (size_t)want, 0);
    if (n < 0) {
        if (errno != EINTR && errno != EAGAIN) fail(c, "recv", errno);
        return;
    }
    if (n == 0) {
        fail(c, "server closed the connection", 0);
        return;
    }
    if (memcmp(load.readbuf, load.pattern + c->offset + c->received, (size_t)n) != 0) {
        fail(c, "echo differs from what was sent", 0);
        return;
    }
    c->received += n;
    if (c->received < load.size) return;
    if (c->sent < load.size) { /* more came back than was sent */
        fail(c, "echo ahead of the request", 0);
        return;
    }
    load.completed++;
    if (load.issued < load.cap && now() < load.deadline)
        start_request(c);
    else
        finish(c);
}

static int run_load(const struct options *o, const struct sockaddr_in *addr) {
    load.size = o->size;
    load.cap = o->requests;
    load.readbuf_size = o->size < (256 << 10) ? o->size : (256 << 10);
    load.pattern = malloc((size_t)o->size + PATTERN_SLACK);
    load.readbuf = malloc((size_t)load.readbuf_size);
    struct conn *conns = calloc((size_t)o->connections, sizeof *conns);
    int *fds = malloc(sizeof *fds * (size_t)o->connections);
    load.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!load.pattern || !load.readbuf || !conns || !fds || load.ep < 0) {
        report_error("setup", errno);
        return 1;
    }
    /* xorshift bytes: no short period that a misplaced echo could match. */
    uint32_t x = 2463534242u;
    for (long i = 0; i < o->size + PATTERN_SLACK; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        load.pattern[i] = (unsigned char)x;
    }

    if (connect_all(addr, o->connections, fds) != o->connections) {
        printf("requests=0 seconds=0.00 errors=%ld\n", o->connections);
        return 1;
    }
    const double start = now();
    load.deadline = start + o->duration;
    for (long i = 0; i < o->connections; i++) {
        struct conn *c = &conns[i];
        c->fd = fds[i];
        if (load.issued == load.cap) continue; /* more connections than requests */
        c->offset = (unsigned)i % PATTERN_SLACK; /* so connections differ too */
        c->interest = EPOLLIN;
        c->active = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(load.ep, EPOLL_CTL_ADD, c->fd, &ev);
        load.in_flight++;
        start_request(c);
    }
    struct epoll_event events[64];
    /* Requests still in flight at the deadline are abandoned, not counted. */
    while (load.in_flight > 0 && now() < load.deadline) {
        int ready = epoll_wait(load.ep, events, 64, timeout_ms(load.deadline));
        if (ready < 0 && errno != EINTR) {
            report_error("epoll_wait", errno);
            load.errors++;
            break;
        }
        for (int k = 0; k < ready; k++) {
            struct conn *c = events[k].data.ptr;
            /* Errors and hangups surface from the recv/send below. */
            if (c->active && (events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) receive_some(c);
            if (c->active && (events[k].events & EPOLLOUT)) send_some(c);
        }
    }
    const double seconds = now() - start;

    printf("requests=%lld seconds=%.2f errors=%ld\n", load.completed, seconds, load.errors);
    for (long i = 0; i < o->connections; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return load.errors == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    struct options o = parse_options(argc, argv);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
    if (inet_pton(AF_INET, o.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "load_client: --host must be an IPv4 address, not '%s'\n", o.host);
        return 2;
    }
    /* Our sockets plus stdio, epoll and some slack. */
    raise_nofile((rlim_t)(o.idle ? o.idle : o.connections) + 16);
    return o.idle ? run_idle(&o, &addr) : run_load(&o, &addr);
}
