/* One-way delay through a relay, for bench/proxy/run.sh: this program is
 * both ends. It listens on 127.0.0.1:UPSTREAM_PORT (the relay's upstream),
 * connects to the relay at 127.0.0.1:RELAY_PORT, and COUNT times sends SIZE
 * bytes from the client end and times their arrival at the upstream end,
 * with one clock. Both ends poll without sleeping, so that what is timed is
 * the relay, not how late a sleeping measurer wakes up. Prints percentiles
 * in microseconds:  count=1000 p50=35 p90=41 p99=60 max=200
 * usage: delay_probe UPSTREAM_PORT RELAY_PORT COUNT SIZE
 * Exit status: 0, 1 on a failure (said on stderr), 2 on bad usage. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: delay_probe UPSTREAM_PORT RELAY_PORT COUNT SIZE\n");
        return 2;
    }
    const long count = atol(argv[3]), size = atol(argv[4]);
    if (count < 1 || size < 1 || size > (1 << 20)) {
        fprintf(stderr, "delay_probe: COUNT and SIZE must be positive (SIZE at most 1 MiB)\n");
        return 2;
    }
    int one = 1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in up = loopback(atoi(argv[1])), relay = loopback(atoi(argv[2]));
    if (bind(listener, (struct sockaddr *)&up, sizeof up) != 0 || listen(listener, 4) != 0) {
        perror("delay_probe: listen");
        return 1;
    }
    /* The relay starts after us: try its port for up to 10 s. */
    int client = -1;
    for (int i = 0; i < 200; ++i) {
        client = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(client, (struct sockaddr *)&relay, sizeof relay) == 0) break;
        close(client);
        client = -1;
        usleep(50000);
    }
    if (client < 0) {
        fprintf(stderr, "delay_probe: the relay never listened on %s\n", argv[2]);
        return 1;
    }
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int upstream = accept(listener, NULL, NULL);
    if (upstream < 0) {
        perror("delay_probe: accept");
        return 1;
    }
    char *buf = malloc((size_t)size);
    double *delay = malloc(sizeof(double) * (size_t)count);
    memset(buf, 'd', (size_t)size);
    for (long i = 0; i < count; ++i) {
        const double start = now_us();
        if (send(client, buf, (size_t)size, MSG_NOSIGNAL) != size) {
            perror("delay_probe: send");
            return 1;
        }
        for (long got = 0; got < size;) {
            ssize_t n = recv(upstream, buf, (size_t)(size - got), MSG_DONTWAIT);
            if (n > 0) got += n;
            else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                fprintf(stderr, "delay_probe: the relay ended the connection after %ld probes\n", i);
                return 1;
            }
        }
        delay[i] = now_us() - start;
    }
    qsort(delay, (size_t)count, sizeof(double), cmp);
#define AT(p) delay[(long)((p) * (count - 1))]
    printf("count=%ld p50=%.0f p90=%.0f p99=%.0f max=%.0f\n", count, AT(0.50), AT(0.90), AT(0.99), delay[count - 1]);
    return 0;
}
