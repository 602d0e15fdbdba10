/*
 * pause: the first process of every pod sandbox. It holds the pod's namespaces open and does
 * nothing else: it sleeps until SIGINT or SIGTERM (then exits 0) and, being PID 1 when the pod
 * shares one PID namespace, reaps the children that orphaned processes leave to it.
 *
 * PID 1 ignores any signal it has no handler for, so both handlers are needed.
 * Built static (gcc -static) so that its image holds this one file.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "3.10-local"

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        printf("pause %s\n", VERSION);
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "pause: not PID 1, so orphans are not reaped here\n");
    }

    struct sigaction action;
    memset(&action, 0, sizeof(action));
    sigemptyset(&action.sa_mask);
    action.sa_handler = stop;
    if (sigaction(SIGINT, &action, NULL) != 0 || sigaction(SIGTERM, &action, NULL) != 0) {
        perror("pause: sigaction");
        return 1;
    }
    action.sa_handler = reap;
    action.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &action, NULL) != 0) {
        perror("pause: sigaction");
        return 1;
    }

    for (;;) {
        pause();
    }
}
