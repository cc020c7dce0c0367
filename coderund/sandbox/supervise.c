/* coderund-supervise: runs one program inside a sandbox container and reports on it.
 *
 * Usage: supervise WALL_MS OUTPUT_CAP STDIN_PATH -- PROGRAM [ARGS...]
 *
 * The program runs in its own session with stdin from STDIN_PATH ("-" for /dev/null).
 * Its stdout and stderr are read as they come and kept up to OUTPUT_CAP bytes each; past
 * that, or past WALL_MS, the whole process group is killed. Then one report goes to our
 * stdout: a header line of key=value pairs, the kept stdout bytes, the kept stderr bytes.
 * Built statically on the worker's host so that it runs in any image.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct stream {
    int fd;
    char *data;
    size_t len, cap;
    int over;
};

static int sigchld_pipe[2];

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno;
    ssize_t ignored = write(sigchld_pipe[1], "c", 1);
    (void)ignored;
    errno = saved;
}

static long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

/* The kernel's count of OOM kills in this container's memory cgroup (v2 or v1), -1 if unknown. */
static long oom_kills(void) {
    const char *paths[] = {"/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(paths[i], "r");
        if (!f) continue;
        char key[64];
        long value;
        while (fscanf(f, "%63s %ld", key, &value) == 2) {
            if (strcmp(key, "oom_kill") == 0) {
                fclose(f);
                return value;
            }
        }
        fclose(f);
    }
    return -1;
}

/* Returns 1 after reading, 0 at end of stream, -1 when nothing is there now. Bytes past the
 * cap are dropped. */
static int drain(struct stream *s) {
    char buf[65536];
    ssize_t n = read(s->fd, buf, sizeof buf);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? -1 : 0;
    if (n == 0) return 0;
    size_t room = s->cap - s->len;
    size_t keep = (size_t)n < room ? (size_t)n : room;
    memcpy(s->data + s->len, buf, keep);
    s->len += keep;
    if ((size_t)n > keep) s->over = 1;
    return 1;
}

static void write_all(const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(1, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            exit(125);
        }
        p += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: supervise WALL_MS OUTPUT_CAP STDIN_PATH -- PROGRAM [ARGS...]\n");
        return 125;
    }
    /* Not dumpable: the program runs as our uid, and must not ptrace us to forge the report. */
    prctl(PR_SET_DUMPABLE, 0);
    long wall_ms = atol(argv[1]);
    size_t output_cap = (size_t)atol(argv[2]);
    const char *stdin_path = strcmp(argv[3], "-") == 0 ? "/dev/null" : argv[3];

    int out_pipe[2], err_pipe[2];
    if (pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC) || pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK)) {
        perror("pipe");
        return 125;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);

    long oom_before = oom_kills();
    long started = now_us();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 125;
    }
    if (pid == 0) {
        setsid();
        int in = open(stdin_path, O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0) _exit(126);
        signal(SIGCHLD, SIG_DFL);
        execvp(argv[5], argv + 5);
        fprintf(stderr, "cannot run %s: %s\n", argv[5], strerror(errno));
        _exit(127);
    }
    close(out_pipe[1]);
    close(err_pipe[1]);

    struct stream streams[2] = {
        {out_pipe[0], malloc(output_cap + 1), 0, output_cap, 0},
        {err_pipe[0], malloc(output_cap + 1), 0, output_cap, 0},
    };
    int open_streams = 2, exited = 0, timed_out = 0, status = 0;
    struct rusage usage = {0};
    long deadline = started + wall_ms * 1000L;

    /* Until the program exits: copy output, watch the clock and the caps. A background child
     * holding the pipes open does not keep us waiting once the program itself is gone. */
    while (!exited) {
        struct pollfd fds[3] = {{sigchld_pipe[0], POLLIN, 0}, {streams[0].fd, POLLIN, 0}, {streams[1].fd, POLLIN, 0}};
        long left_ms = (deadline - now_us()) / 1000;
        if (left_ms <= 0) {
            timed_out = 1;
            break;
        }
        if (poll(fds, 3, (int)(left_ms > 1000 ? 1000 : left_ms + 1)) < 0 && errno != EINTR) break;
        for (int i = 0; i < 2; i++) {
            if (streams[i].fd >= 0 && (fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) && drain(&streams[i]) == 0) {
                close(streams[i].fd);
                streams[i].fd = -1;
                open_streams--;
            }
        }
        if (streams[0].over || streams[1].over) break;
        if (fds[0].revents & POLLIN) {
            char c;
            while (read(sigchld_pipe[0], &c, 1) > 0) {}
            if (wait4(pid, &status, WNOHANG, &usage) == pid) exited = 1;
        }
    }
    long wall_us = now_us() - started;
    kill(-pid, SIGKILL);
    if (!exited) {
        while (wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {}
    }
    /* Whatever the program wrote before it ended is still in the pipes. */
    for (int i = 0; i < 2; i++) {
        if (streams[i].fd < 0) continue;
        fcntl(streams[i].fd, F_SETFL, O_NONBLOCK);
        while (!streams[i].over && drain(&streams[i]) == 1) {}
    }
    long oom_after = oom_kills();

    long cpu_us = usage.ru_utime.tv_sec * 1000000L + usage.ru_utime.tv_usec + usage.ru_stime.tv_sec * 1000000L +
                  usage.ru_stime.tv_usec;
    char header[512];
    int n = snprintf(header, sizeof header,
                     "coderund-report exit=%d signal=%d wall_us=%ld cpu_us=%ld maxrss_kb=%ld timed_out=%d "
                     "output_over=%d oom=%d stdout=%zu stderr=%zu\n",
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0,
                     wall_us, cpu_us, usage.ru_maxrss, timed_out, streams[0].over || streams[1].over,
                     oom_before < 0 ? -1 : (int)(oom_after > oom_before), streams[0].len, streams[1].len);
    write_all(header, (size_t)n);
    write_all(streams[0].data, streams[0].len);
    write_all(streams[1].data, streams[1].len);
    return 0;
}
