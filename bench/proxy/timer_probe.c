/* The floor under a latency fault's accuracy, for bench/proxy/run.sh: how
 * late this host wakes a thread that waits for a timer the way an event
 * loop does (a timerfd in epoll, as Asio's reactor), with the timer slack
 * at 1 ns as `conduit proxy` sets it. COUNT times: arm for DELAY_US from
 * now, wait, and note how late the wake-up came. Prints percentiles of
 * that lateness in microseconds:  count=1000 p50=60 p90=80 p99=400 max=900
 * usage: timer_probe COUNT DELAY_US
 * Exit status: 0, 1 on a failure (said on stderr), 2 on bad usage. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static double us(const struct timespec *ts) { return ts->tv_sec * 1e6 + ts->tv_nsec / 1e3; }

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: timer_probe COUNT DELAY_US\n");
        return 2;
    }
    const long count = atol(argv[1]), delay_us = atol(argv[2]);
    if (count < 1 || delay_us < 1 || delay_us > 10 * 1000 * 1000) {
        fprintf(stderr, "timer_probe: COUNT must be positive, DELAY_US from 1 to 10000000\n");
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    const int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    const int poller = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN};
    if (timer < 0 || poller < 0 || epoll_ctl(poller, EPOLL_CTL_ADD, timer, &event) != 0) {
        perror("timer_probe: timerfd/epoll");
        return 1;
    }
    double *late = malloc(sizeof(double) * (size_t)count);
    for (long i = 0; i < count; ++i) {
        struct timespec now, due;
        clock_gettime(CLOCK_MONOTONIC, &now);
        const long long ns = (long long)now.tv_nsec + delay_us * 1000LL;
        due.tv_sec = now.tv_sec + (time_t)(ns / 1000000000LL);
        due.tv_nsec = (long)(ns % 1000000000LL);
        struct itimerspec spec = {.it_value = due};
        if (timerfd_settime(timer, TFD_TIMER_ABSTIME, &spec, NULL) != 0) {
            perror("timer_probe: timerfd_settime");
            return 1;
        }
        while (epoll_wait(poller, &event, 1, -1) != 1) {
        }
        uint64_t expirations;
        if (read(timer, &expirations, sizeof expirations) != sizeof expirations) {
            perror("timer_probe: read");
            return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        late[i] = us(&now) - us(&due);
    }
    qsort(late, (size_t)count, sizeof(double), cmp);
#define AT(p) late[(long)((p) * (count - 1))]
    printf("count=%ld p50=%.0f p90=%.0f p99=%.0f max=%.0f\n", count, AT(0.50), AT(0.90), AT(0.99), late[count - 1]);
    return 0;
}
