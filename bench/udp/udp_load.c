/* Load client for bench/udp/run.sh: keeps WINDOW datagrams of SIZE bytes in
 * flight to a UDP echo server for SECONDS, sending one more per echo, and
 * prints "echoes=N seconds=S". A window that stalls 100 ms (datagrams lost)
 * is refilled, so loss slows the count but never hangs the run.
 * usage: udp_load PORT SIZE WINDOW SECONDS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: udp_load PORT SIZE WINDOW SECONDS\n");
    return 2;
  }
  int port = atoi(argv[1]), size = atoi(argv[2]), window = atoi(argv[3]);
  double seconds = atof(argv[4]);
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
    perror("connect");
    return 1;
  }
  char *buf = calloc(1, (size_t)size + 1);
  long echoes = 0;
  double start = now(), end = start + seconds;
  for (int i = 0; i < window; ++i) send(fd, buf, (size_t)size, 0);
  struct pollfd p = {.fd = fd, .events = POLLIN};
  while (now() < end) {
    int r = poll(&p, 1, 100);
    if (r == 0) {  /* the window drained by loss: refill it */
      for (int i = 0; i < window; ++i) send(fd, buf, (size_t)size, 0);
      continue;
    }
    ssize_t n = recv(fd, buf, (size_t)size + 1, MSG_DONTWAIT);
    if (n < 0) continue;
    ++echoes;
    send(fd, buf, (size_t)size, 0);
  }
  printf("echoes=%ld seconds=%.3f\n", echoes, now() - start);
  return 0;
}
