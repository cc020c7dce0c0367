/* coderund-supervise: the first process of a sandbox container. It waits for one request on its
 * stdin, runs that one program, reports on it on its stdout, and exits, which ends the container:
 * a container serves one task and no more.
 *
 * Usage: supervise WORK_FOLDER (its files, and the program's working folder)
 *
 * Request and report are made of items, each "<decimal length>:<bytes>".
 * Request: "coderund-2", WALL_MS, OUTPUT_CAP, COLLECT (0|1), LIVE (0|1), NFILES, then NFILES times
 *          PATH MODE DATA (paths relative to the work folder, MODE a st_mode in decimal: a folder or a
 *          regular file), STDIN, ARGC, then ARGC arguments.
 * Report:  one header line of key=value pairs, the kept stdout bytes, the kept stderr bytes, and with
 *          COLLECT the work folder's folders and regular files as PATH MODE DATA items, ended by an
 *          empty PATH.
 *
 * The program runs in its own session with stdin from a memory file. Its stdout and stderr are read as
 * they come and kept up to OUTPUT_CAP bytes each; past that, or past WALL_MS, the whole process group
 * is killed. Built statically on the worker's host so that it runs in any image.
 *
 * Identity: the supervisor runs as root with only CAP_SETUID, CAP_SETGID, CAP_KILL and CAP_CHOWN (the
 * container's settings); the program runs as SANDBOX_UID with no capabilities. So the program can
 * neither signal us, nor open our descriptors through /proc/1/fd (the report stream), nor ptrace us,
 * under any runtime. It also runs under a seccomp filter of ours on top of the engine's, which denies
 * io_uring whatever the engine's own profile allows.
 *
 * LIVE: stdin is a pipe that STDIN starts and later items on our stdin feed, as they come (an empty
 * item closes it); every kept piece of output is also sent at once as an item, "1" or "2" then the
 * bytes, and an empty item ends them before the report.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITEM (1L << 30)
#define MAX_PENDING (1L << 20) /* live stdin not yet taken by the program: past this, we stop reading */
#define SANDBOX_UID 65534        /* nobody: the program's identity, never ours */
#define REAP_TRIES 2000          /* 1 ms apart: how long we wait for killed processes to be gone */
#if defined(__x86_64__)
#define AUDIT_ARCH_SELF AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_SELF AUDIT_ARCH_AARCH64
#else
#error "the seccomp filter knows x86-64 and arm64"
#endif

struct stream {
    int fd;
    char *data;
    size_t len, cap;
    int over;
    char tag; /* in live output items */
};

/* Live stdin that the program has not taken yet, and where it goes. */
static struct {
    char *data;
    size_t len;
    int fd;     /* the write end of the program's stdin, -1 once closed */
    int ending; /* no more is coming: close fd once data is written */
} pending = {NULL, 0, -1, 0};

static int sigchld_pipe[2];
static int live;

static void fail(const char *what) {
    fprintf(stderr, "coderund-supervise: %s: %s\n", what, errno ? strerror(errno) : "bad request");
    exit(125);
}

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

/* ---- the request ---- */

static long item_length(void) {
    long n = 0;
    int c, digits = 0;
    while ((c = getchar()) != ':') {
        if (c < '0' || c > '9' || ++digits > 10) {
            errno = 0;
            fail("item length");
        }
        n = n * 10 + (c - '0');
    }
    if (n > MAX_ITEM) fail("item too large");
    return n;
}

/* The next item as a NUL-terminated string (items never hold NUL where this is used). */
static char *item(void) {
    long n = item_length();
    char *data = malloc((size_t)n + 1);
    if (!data) fail("malloc");
    if (n && fread(data, 1, (size_t)n, stdin) != (size_t)n) fail("short request");
    data[n] = 0;
    return data;
}

static long number(void) {
    char *text = item(), *end;
    long value = strtol(text, &end, 10);
    if (!*text || *end || value < 0) {
        errno = 0;
        fail("number");
    }
    free(text);
    return value;
}

/* Copies the next item into fd without holding it in memory. */
static void item_to(int fd) {
    char buf[65536];
    long left = item_length();
    while (left > 0) {
        size_t n = fread(buf, 1, left < (long)sizeof buf ? (size_t)left : sizeof buf, stdin);
        if (n == 0) fail("short request");
        for (size_t done = 0; done < n;) {
            ssize_t w = write(fd, buf + done, n - done);
            if (w < 0) fail("writing a file");
            done += (size_t)w;
        }
        left -= (long)n;
    }
}

/* The worker builds the paths, but a path must stay in the work folder however it was made. */
static void check_path(const char *path) {
    errno = 0;
    if (!*path || path[0] == '/' || strcmp(path, "..") == 0 || strncmp(path, "../", 3) == 0 || strstr(path, "/../") ||
        (strlen(path) >= 3 && strcmp(path + strlen(path) - 3, "/..") == 0))
        fail("path outside the work folder");
}

static void make_parents(char *path) {
    for (char *slash = strchr(path, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = 0;
        if (mkdir(path, 0755) < 0 && errno != EEXIST) fail("mkdir");
        if (chown(path, SANDBOX_UID, SANDBOX_UID) < 0) fail("chown");
        *slash = '/';
    }
}

static void receive_file(void) {
    char *path = item();
    check_path(path);
    mode_t mode = (mode_t)number();
    make_parents(path);
    if (S_ISDIR(mode)) {
        if (mkdir(path, mode & 0777) < 0 && errno != EEXIST) fail("mkdir");
        if (chown(path, SANDBOX_UID, SANDBOX_UID) < 0) fail("chown");
        if (item_length() != 0) fail("a folder with data");
    } else {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) fail(path);
        item_to(fd);
        /* The program's own, as if it had written them: a build may write beside its sources. */
        if (fchmod(fd, mode & 0777) < 0 || fchown(fd, SANDBOX_UID, SANDBOX_UID) < 0) fail("fchown");
        close(fd);
    }
    free(path);
}

/* ---- the report ---- */

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

static void send_item(const char *data, size_t n) {
    char length[32];
    write_all(length, (size_t)snprintf(length, sizeof length, "%zu:", n));
    write_all(data, n);
}

static void send_number(long value) {
    char text[32];
    send_item(text, (size_t)snprintf(text, sizeof text, "%ld", value));
}

static int send_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)ftw;
    if (strcmp(path, ".") == 0 || (type != FTW_F && type != FTW_D)) return 0;
    if (type == FTW_F && !S_ISREG(st->st_mode)) return 0; /* links, devices, sockets: never sent */
    const char *name = strncmp(path, "./", 2) == 0 ? path + 2 : path;
    char *data = NULL;
    size_t len = 0;
    if (type == FTW_F) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) return 0;
        data = malloc((size_t)st->st_size + 1);
        ssize_t n;
        while (data && len < (size_t)st->st_size && (n = read(fd, data + len, (size_t)st->st_size - len)) > 0) len += (size_t)n;
        close(fd);
        if (!data) fail("malloc");
    }
    send_item(name, strlen(name));
    send_number((long)(st->st_mode & (S_IFMT | 0777)));
    send_item(data ? data : "", len);
    free(data);
    return 0;
}

/* ---- running the program ---- */

/* In the child, before exec: the program's identity, with no way back and no capabilities left
 * (setuid from root to another uid clears them all), then the seccomp filter. */
static void become_program(void) {
    static struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_SELF, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS), /* another ABI: nothing of ours uses one */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#ifdef __X32_SYSCALL_BIT
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 4, 0), /* x32 numbers: denied */
#else
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),
#endif
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    };
    struct sock_fprog program = {sizeof filter / sizeof filter[0], filter};
    gid_t gid = SANDBOX_UID;
    if (setgroups(1, &gid) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID) < 0 ||
        getuid() != SANDBOX_UID || geteuid() != SANDBOX_UID) {
        fprintf(stderr, "coderund-supervise: cannot take the sandbox identity: %s\n", strerror(errno));
        _exit(125);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) < 0) {
        fprintf(stderr, "coderund-supervise: cannot install the seccomp filter: %s\n", strerror(errno));
        _exit(125);
    }
}

/* As the container's first process, every process left in it becomes our child: wait until all
 * are gone, so that nothing of the program's runs while we read the work folder. */
static void reap_all(void) {
    for (int i = 0; i < REAP_TRIES; i++) {
        pid_t done;
        while ((done = waitpid(-1, NULL, WNOHANG)) > 0) {}
        if (done < 0 && errno == ECHILD) return;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
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
    if (live && keep) {
        char length[32];
        write_all(length, (size_t)snprintf(length, sizeof length, "%zu:%c", keep + 1, s->tag));
        write_all(buf, keep);
    }
    if ((size_t)n > keep) s->over = 1;
    return 1;
}

/* Appends the next item on our stdin to pending: live input for the program. An empty item, or the
 * end of our stdin, means no more is coming. */
static void receive_input(void) {
    int c = getchar();
    if (c == EOF) {
        pending.ending = 1;
        return;
    }
    ungetc(c, stdin);
    long n = item_length();
    if (n == 0) {
        pending.ending = 1;
        return;
    }
    pending.data = realloc(pending.data, pending.len + (size_t)n);
    if (!pending.data) fail("realloc");
    if (fread(pending.data + pending.len, 1, (size_t)n, stdin) != (size_t)n) fail("short input");
    pending.len += (size_t)n;
}

/* Gives the program what it will take of pending now, without blocking. */
static void feed_program(void) {
    if (pending.len) {
        ssize_t w = write(pending.fd, pending.data, pending.len);
        if (w > 0) {
            memmove(pending.data, pending.data + w, pending.len - (size_t)w);
            pending.len -= (size_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            pending.len = 0; /* the program closed its stdin: what it did not read is dropped */
            pending.ending = 1;
        }
    }
    if (!pending.len && pending.ending) {
        close(pending.fd);
        pending.fd = -1;
    }
}

int main(int argc, char **argv) {
    /* Not dumpable, besides being another identity: nothing may ptrace us or open /proc/1/fd. */
    prctl(PR_SET_DUMPABLE, 0);
    umask(022);
    if (argc != 2 || chdir(argv[1]) < 0) fail("usage: supervise WORK_FOLDER");
    /* Unbuffered: what follows the request on our stdin (live input) is read only when polled for. */
    setvbuf(stdin, NULL, _IONBF, 0);
    char *magic = item();
    if (strcmp(magic, "coderund-2") != 0) {
        errno = 0;
        fail("not a coderund request");
    }
    long wall_ms = number();
    size_t output_cap = (size_t)number();
    int collect = number() != 0;
    live = number() != 0;
    for (long files = number(); files > 0; files--) receive_file();
    int in;
    if (live) {
        int in_pipe[2];
        if (pipe2(in_pipe, O_CLOEXEC)) fail("pipe");
        in = in_pipe[0];
        pending.fd = in_pipe[1];
        fcntl(pending.fd, F_SETFL, O_NONBLOCK);
        signal(SIGPIPE, SIG_IGN); /* a program that closes its stdin makes our write fail, not kill us */
        long n = item_length();
        pending.data = malloc((size_t)n + 1);
        if (!pending.data || (n && fread(pending.data, 1, (size_t)n, stdin) != (size_t)n)) fail("stdin");
        pending.len = (size_t)n;
    } else {
        in = memfd_create("stdin", MFD_CLOEXEC);
        if (in < 0) fail("memfd_create");
        item_to(in);
        lseek(in, 0, SEEK_SET);
    }
    long words = number();
    if (words < 1 || words > 4096) fail("program");
    char **program = calloc((size_t)words + 1, sizeof *program);
    if (!program) fail("calloc");
    for (long i = 0; i < words; i++) program[i] = item();

    int out_pipe[2], err_pipe[2];
    if (pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC) || pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK)) fail("pipe");
    struct sigaction sa = {0};
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);

    long oom_before = oom_kills();
    long started = now_us();
    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
        setsid();
        become_program();
        if (dup2(in, 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0) _exit(126);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        execvp(program[0], program);
        fprintf(stderr, "cannot run %s: %s\n", program[0], strerror(errno));
        _exit(127);
    }
    close(out_pipe[1]);
    close(err_pipe[1]);
    close(in);

    struct stream streams[2] = {
        {out_pipe[0], malloc(output_cap + 1), 0, output_cap, 0, '1'},
        {err_pipe[0], malloc(output_cap + 1), 0, output_cap, 0, '2'},
    };
    int open_streams = 2, exited = 0, timed_out = 0, status = 0;
    struct rusage usage = {0};
    long deadline = started + wall_ms * 1000L;

    /* Until the program exits: copy output, watch the clock and the caps. A background child
     * holding the pipes open does not keep us waiting once the program itself is gone. As the
     * container's first process we also reap orphans, so they do not pile up as zombies. */
    while (!exited) {
        int reading = live && !pending.ending && pending.len < MAX_PENDING;
        struct pollfd fds[5] = {{sigchld_pipe[0], POLLIN, 0}, {streams[0].fd, POLLIN, 0}, {streams[1].fd, POLLIN, 0},
                                {reading ? 0 : -1, POLLIN, 0}, {pending.len ? pending.fd : -1, POLLOUT, 0}};
        long left_ms = (deadline - now_us()) / 1000;
        if (poll(fds, 5, left_ms <= 0 ? 0 : (int)(left_ms > 1000 ? 1000 : left_ms + 1)) < 0 && errno != EINTR) break;
        if (fds[3].revents) receive_input();
        if (pending.fd >= 0 && (fds[3].revents || fds[4].revents || pending.ending)) feed_program();
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
            int child_status;
            struct rusage child_usage;
            pid_t done;
            while ((done = wait4(-1, &child_status, WNOHANG, &child_usage)) > 0) {
                if (done == pid) {
                    exited = 1;
                    status = child_status;
                    usage = child_usage;
                }
            }
        }
        /* Only a program still running at its deadline is out of time: one that ended just before
         * we looked keeps its own exit. */
        if (!exited && now_us() >= deadline) {
            timed_out = 1;
            break;
        }
    }
    long wall_us = now_us() - started;
    kill(-pid, SIGKILL);
    /* Whatever else the program left behind goes too: as the container's first process, kill(-1)
     * reaches every other process in the container and spares us. (Anywhere else, never.) */
    if (getpid() == 1) kill(-1, SIGKILL);
    if (!exited) {
        while (wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {}
    }
    if (getpid() == 1) reap_all();
    /* Whatever the program wrote before it ended is still in the pipes. */
    for (int i = 0; i < 2; i++) {
        if (streams[i].fd < 0) continue;
        fcntl(streams[i].fd, F_SETFL, O_NONBLOCK);
        while (!streams[i].over && drain(&streams[i]) == 1) {}
    }
    long oom_after = oom_kills();
    if (timed_out) status = SIGKILL; /* the wait status of a SIGKILL: whatever it did at the last moment, we killed it */

    long cpu_us = usage.ru_utime.tv_sec * 1000000L + usage.ru_utime.tv_usec + usage.ru_stime.tv_sec * 1000000L +
                  usage.ru_stime.tv_usec;
    char header[512];
    int n = snprintf(header, sizeof header,
                     "coderund-report exit=%d signal=%d wall_us=%ld cpu_us=%ld maxrss_kb=%ld timed_out=%d "
                     "output_over=%d oom=%d stdout=%zu stderr=%zu files=%d\n",
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0,
                     wall_us, cpu_us, usage.ru_maxrss, timed_out, streams[0].over || streams[1].over,
                     oom_before < 0 ? -1 : (int)(oom_after > oom_before), streams[0].len, streams[1].len, collect);
    if (live) write_all("0:", 2);
    write_all(header, (size_t)n);
    write_all(streams[0].data, streams[0].len);
    write_all(streams[1].data, streams[1].len);
    if (collect) {
        nftw(".", send_entry, 16, FTW_PHYS);
        send_item("", 0);
    }
    return 0;
}
