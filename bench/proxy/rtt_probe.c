/* Round-trip times through a relay, for bench/proxy/run.sh: one TCP
 * connection, COUNT sequential ping-pongs of SIZE bytes (the next sent once
 * the last is wholly back), then one line of percentiles in microseconds:
 *   count=2000 p50=123 p90=150 p99=210 max=900
 * usage: rtt_probe HOST PORT COUNT SIZE
 * Exit status: 0, 1 on a failure (said on stderr), 2 on bad usage. */
#define _GNU_SOURCE
#include <arpa/inet.h>
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

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: rtt_probe HOST PORT COUNT SIZE\n");
        return 2;
    }
    const long count = atol(argv[3]), size = atol(argv[4]);
    if (count < 1 || size < 1 || size > (1 << 24)) {
        fprintf(stderr, "rtt_probe: COUNT and SIZE must be positive (SIZE at most 16 MiB)\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "rtt_probe: %s is not an IPv4 address\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("rtt_probe: connect");
        return 1;
    }
    char *out = malloc((size_t)size), *in = malloc((size_t)size);
    double *rtt = malloc(sizeof(double) * (size_t)count);
    memset(out, 'p', (size_t)size);
    for (long i = 0; i < count; ++i) {
        const double start = now_us();
        for (long sent = 0; sent < size;) {
            ssize_t n = send(fd, out + sent, (size_t)(size - sent), MSG_NOSIGNAL);
            if (n <= 0) {
                perror("rtt_probe: send");
                return 1;
            }
            sent += n;
        }
        for (long got = 0; got < size;) {
            ssize_t n = recv(fd, in + got, (size_t)(size - got), 0);
            if (n <= 0) {
                fprintf(stderr, "rtt_probe: the connection ended after %ld round trips\n", i);
                return 1;
            }
            got += n;
        }
        rtt[i] = now_us() - start;
    }
    qsort(rtt, (size_t)count, sizeof(double), cmp);
#define AT(p) rtt[(long)((p) * (count - 1))]
    printf("count=%ld p50=%.0f p90=%.0f p99=%.0f max=%.0f\n", count, AT(0.50), AT(0.90), AT(0.99), rtt[count - 1]);
    close(fd);
    return 0;
}
