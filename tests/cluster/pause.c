/* The pod sandbox's only process: it holds the pod's namespaces open, reaps the zombies of
 * processes that end up parented to it (it is PID 1 of the pod when the PID namespace is shared),
 * and exits 0 on SIGINT/SIGTERM. Built static (tests/cluster/nodeimages.py) into a one-file image. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

static int on(int sig, void (*handler)(int)) {
  struct sigaction act;
  memset(&act, 0, sizeof(act));
  act.sa_handler = handler;
  act.sa_flags = sig == SIGCHLD ? SA_NOCLDSTOP | SA_RESTART : 0;
  return sigaction(sig, &act, NULL);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("pfo pause");
    return 0;
  }
  if (getpid() != 1) fputs("pause: not PID 1 of its namespace; zombies of others stay\n", stderr);
  if (on(SIGINT, leave) || on(SIGTERM, leave) || on(SIGCHLD, reap)) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) pause();
}
