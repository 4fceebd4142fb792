/* The practical limit for bench/subprocess/run.sh: N sequential posix_spawn +
 * waitpid of /bin/true with stdin/stdout/stderr on pipes; prints spawns/s. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; ++i) {
    int p[3][2];
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    for (int k = 0; k < 3; ++k) {
      if (pipe2(p[k], O_CLOEXEC) != 0) return 1;
      posix_spawn_file_actions_adddup2(&fa, k == 0 ? p[k][0] : p[k][1], k);
    }
    char *args[] = {"/bin/true", NULL};
    pid_t pid;
    if (posix_spawn(&pid, "/bin/true", &fa, NULL, args, environ) != 0) return 1;
    posix_spawn_file_actions_destroy(&fa);
    for (int k = 0; k < 3; ++k) { close(p[k][0]); close(p[k][1]); }
    int status;
    waitpid(pid, &status, 0);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
  printf("%.0f\n", n / s);
  return 0;
}
