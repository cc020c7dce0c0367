/* coderund-supervise: the first process of a sandbox container. It waits for one request on its
 * stdin, runs that one program, reports on it on its stdout, and exits, which ends the container:
 * a container serves one task and no more.
 *
 * Usage: supervise WORK_FOLDER (its files, and the program's working folder), or supervise --egress
 * (a stateful sandbox's egress forwarder alone, see start_egress).
 *
 * Request and report are made of items, each "<decimal length>:<bytes>".
 * Request: "coderund-5", WALL_MS, OUTPUT_CAP, COLLECT (0|1), LIVE (0|1), TERMINAL (0|1), MULTI (0|1), AS, FSIZE, NPROC
 *          (the program's address space and file size in bytes and its processes: 0 leaves the
 *          container's limits; a foreign API's, such as Jobe's rlimits), NFILES, then
 *          NFILES times PATH MODE DATA (paths relative to the work folder, MODE a st_mode in decimal: a
 *          folder or a regular file), then a run: STDIN, ARGC, then ARGC arguments.
 * MULTI:   after each report, another run may follow on our stdin (STDIN, ARGC, arguments: the test
 *          cases of one task, sent one at a time); before it, every process the last run left is
 *          killed, the work folder, /tmp and /dev/shm are emptied and System V IPC objects removed,
 *          and the work folder is laid anew from the request's files. The end of our stdin ends us.
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
 * io_uring whatever the engine's own profile allows. Between runs (MULTI) we take its effective ids
 * for a moment, to empty what it wrote, once no process of its is left.
 *
 * LIVE: stdin is a pipe that STDIN starts and later items on our stdin feed, as they come (an empty
 * item closes it); every kept piece of output is also sent at once as an item, "1" or "2" then the
 * bytes, and an empty item ends them before the report.
 *
 * TERMINAL (with LIVE): the program's stdout, and its stdin where the kernel's terminals can end
 * input, are a pseudo-terminal of the container's own (its devpts), its stderr still a pipe, so that
 * runtimes buffer and prompt as on a terminal. The program leads its session with that terminal as its
 * controlling one; we hold the master. The terminal hands input on by lines (canonical mode), and
 * nothing else: no echo, no line editing, no signals from input, no translation of carriage returns
 * or newlines, so the bytes sent and written pass as they are. Its EOF character (Ctrl-D) hands on a
 * line begun, and at a line's start is an end of file: the end of the input is sent as that. gVisor's
 * terminals (runsc 20221219) never give a reader an end of file: there stdin stays a pipe.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <fcntl.h>
#include <dirent.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITEM (1L << 30)
#define MAX_PENDING (1L << 20) /* live stdin not yet taken by the program: past this, we stop reading */
#define SANDBOX_UID 65534        /* nobody: the program's identity, never ours */
#define REAP_TRIES 2000          /* 1 ms apart: how long we wait for killed processes to be gone */
#define LINE_MAX_BYTES 4000      /* of a terminal's line: a canonical line holds 4095, Linux drops the rest */
#define EGRESS_PORT 3128       /* the egress forwarder's, on the container's own loopback */
#define EGRESS_BUFFER 65536
#define TERMINAL_ROWS 24
#define TERMINAL_COLUMNS 80
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
    int fd;     /* the write end of the program's stdin (a terminal's master), -1 once ended */
    int ending; /* no more is coming: end the input once data is written */
} pending = {NULL, 0, -1, 0};

static int sigchld_pipe[2];
static int live;
static int replica = -1; /* with TERMINAL, our own descriptor of the program's terminal: its settings, and
                          * its output readable after the program is gone */
static int input_terminal; /* the program's stdin is the terminal (else a pipe) */
static size_t line_bytes; /* sent on the terminal's current line, not yet handed on to the program */
static int eof_sent;      /* the terminal's end of input is in pending */
static long run_limits[3]; /* AS, FSIZE, NPROC of the request: each run's, 0 where not set */

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
        *slash = '/';
    }
}

/* The request's files, kept when the work folder is to be laid anew for another run (MULTI). */
static struct kept_file {
    char *path;
    mode_t mode;
    char *data;
    size_t len;
} *kept;
static long nkept;

static int open_new(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) fail(path);
    return fd;
}

/* The program's own, as if it had written them: a build may write beside its sources. Folders are
 * ours until every file is in them (we could not write into the program's), then given (give_folders). */
static void give(int fd, const char *path, mode_t mode) {
    if (S_ISDIR(mode)) {
        if (mkdir(path, 0700) < 0 && errno != EEXIST) fail("mkdir");
        if (chmod(path, (mode & 0777) | 0700) < 0) fail("chmod");
    } else if (fchmod(fd, mode & 0777) < 0 || fchown(fd, SANDBOX_UID, SANDBOX_UID) < 0) {
        fail("fchown");
    }
}

static int give_folder(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    if (type == FTW_D && strcmp(path, ".") != 0 && lchown(path, SANDBOX_UID, SANDBOX_UID) < 0) fail("chown");
    return 0;
}

static void give_folders(void) {
    if (nftw(".", give_folder, 16, FTW_PHYS) < 0) fail("chown");
}

static void receive_file(int keep) {
    char *path = item();
    check_path(path);
    mode_t mode = (mode_t)number();
    make_parents(path);
    struct kept_file *k = keep ? &kept[nkept++] : NULL;
    if (k) *k = (struct kept_file){path, mode, NULL, 0};
    if (S_ISDIR(mode)) {
        give(-1, path, mode);
        if (item_length() != 0) fail("a folder with data");
    } else if (k) {
        long n = item_length();
        k->data = malloc((size_t)n + 1);
        if (!k->data || (n && fread(k->data, 1, (size_t)n, stdin) != (size_t)n)) fail("short request");
        k->len = (size_t)n;
        int fd = open_new(path);
        for (size_t done = 0; done < k->len;) {
            ssize_t w = write(fd, k->data + done, k->len - done);
            if (w < 0) fail("writing a file");
            done += (size_t)w;
        }
        give(fd, path, mode);
        close(fd);
    } else {
        int fd = open_new(path);
        item_to(fd);
        give(fd, path, mode);
        close(fd);
    }
    if (!k) free(path);
}

/* The work folder as the request laid it, again. */
static void lay_again(void) {
    for (long i = 0; i < nkept; i++) {
        char *path = kept[i].path;
        make_parents(path);
        if (S_ISDIR(kept[i].mode)) {
            give(-1, path, kept[i].mode);
            continue;
        }
        int fd = open_new(path);
        for (size_t done = 0; done < kept[i].len;) {
            ssize_t w = write(fd, kept[i].data + done, kept[i].len - done);
            if (w < 0) fail("writing a file");
            done += (size_t)w;
        }
        give(fd, path, kept[i].mode);
        close(fd);
    }
    give_folders();
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

static void write_vector(struct iovec *parts, int count) {
    while (count > 0) {
        ssize_t w = writev(1, parts, count);
        if (w < 0) {
            if (errno == EINTR) continue;
            exit(125);
        }
        for (; count > 0 && (size_t)w >= parts->iov_len; parts++, count--) w -= (ssize_t)parts->iov_len;
        if (count > 0) {
            parts->iov_base = (char *)parts->iov_base + w;
            parts->iov_len -= (size_t)w;
        }
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

/* In the program's child, as the program: the request's limits, never above what the container
 * allows (an unprivileged process cannot raise a hard limit). */
static void limit_program(void) {
    static const int resources[3] = {RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC};
    for (int i = 0; i < 3; i++) {
        struct rlimit limit;
        if (run_limits[i] <= 0 || getrlimit(resources[i], &limit) < 0) continue;
        rlim_t wanted = (rlim_t)run_limits[i];
        if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < wanted) wanted = limit.rlim_max;
        limit.rlim_cur = limit.rlim_max = wanted;
        if (setrlimit(resources[i], &limit) < 0) {
            fprintf(stderr, "coderund-supervise: cannot set a limit: %s\n", strerror(errno));
            _exit(125);
        }
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

/* The input ends. A pipe is closed. A terminal has no end of its own: its EOF character goes in
 * pending, once to hand on a line begun and then twice (a program that reads again finds another end,
 * as at a pipe), and then our copy of its master is closed (the program's output comes on another). */
static void end_input(void) {
    if (input_terminal && !eof_sent) {
        eof_sent = 1;
        pending.len = line_bytes ? 3 : 2;
        if (!(pending.data = realloc(pending.data, pending.len))) fail("realloc");
        memset(pending.data, CEOF, pending.len);
        return;
    }
    close(pending.fd);
    pending.fd = -1;
}

/* How much of pending to write now, and into eof the terminal's EOF character if it reads by lines (else
 * 0). A pipe takes it all. A line on a terminal is held until it ends and no more of it than a canonical
 * line holds: a longer one is handed on in pieces, each sent with the EOF character, as typing Ctrl-D
 * mid-line does (the program reads the bytes without it). */
static size_t feed_size(unsigned char *eof) {
    struct termios settings;
    *eof = 0;
    if (!input_terminal || tcgetattr(replica, &settings) < 0 || !(settings.c_lflag & ICANON)) return pending.len;
    *eof = settings.c_cc[VEOF];
    if (line_bytes >= LINE_MAX_BYTES) {
        if (write(pending.fd, eof, 1) != 1) return 0;
        line_bytes = 0;
    }
    size_t n = 0;
    while (n < pending.len && line_bytes + n < LINE_MAX_BYTES) {
        unsigned char c = (unsigned char)pending.data[n++];
        if (c == '\n' || c == *eof) break;
    }
    return n;
}

/* Gives the program what it will take of pending now, without blocking. */
static void feed_program(void) {
    if (pending.len) {
        unsigned char eof;
        size_t n = feed_size(&eof);
        ssize_t w = n ? write(pending.fd, pending.data, n) : 0;
        if (w > 0) {
            for (ssize_t i = 0; i < w; i++) {
                unsigned char c = (unsigned char)pending.data[i];
                line_bytes = c == '\n' || (eof && c == eof) ? 0 : line_bytes + 1;
            }
            memmove(pending.data, pending.data + w, pending.len - (size_t)w);
            pending.len -= (size_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            pending.len = 0; /* the program closed its stdin: what it did not read is dropped */
            pending.ending = 1;
        }
    }
    if (!pending.len && pending.ending) end_input();
}

/* One program, to its report. in and out are its stdin and stdout, ours its stdout's other end. */
static void run_program(long wall_ms, size_t output_cap, int collect, int in, int out, int ours, char **program) {
    int err_pipe[2];
    if (pipe2(err_pipe, O_CLOEXEC)) fail("pipe");

    long oom_before = oom_kills();
    long started = now_us();
    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
        setsid();
        /* Its controlling terminal, which shows text and nothing else: runtimes that would drive one
         * (Mono's console) send it no escape sequences. */
        if (replica >= 0 && (ioctl(replica, TIOCSCTTY, 0) < 0 || setenv("TERM", "dumb", 1) < 0)) _exit(126);
        become_program();
        limit_program();
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err_pipe[1], 2) < 0) _exit(126);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        execvp(program[0], program);
        fprintf(stderr, "cannot run %s: %s\n", program[0], strerror(errno));
        _exit(127);
    }
    if (out != replica) close(out); /* the program's end of a pipe; the terminal's replica we keep */
    close(err_pipe[1]);

    struct stream streams[2] = {
        {ours, malloc(output_cap + 1), 0, output_cap, 0, '1'},
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
    /* Whatever the program wrote before it ended is still in the pipes (and the terminal, whose
     * replica we hold: it stays readable). */
    for (int i = 0; i < 2; i++) {
        if (streams[i].fd < 0) continue;
        fcntl(streams[i].fd, F_SETFL, O_NONBLOCK);
        while (!streams[i].over && drain(&streams[i]) == 1) {}
        close(streams[i].fd);
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
    struct iovec report[3] = {{header, (size_t)n}, {streams[0].data, streams[0].len}, {streams[1].data, streams[1].len}};
    write_vector(report, 3); /* one write: one frame for the engine and the worker to pass on, not three */
    if (collect) {
        nftw(".", send_entry, 16, FTW_PHYS);
        send_item("", 0);
    }
    free(streams[0].data);
    free(streams[1].data);
    close(in);
}

/* A pseudo-terminal of the container's devpts (never the host's): its master, and into *replica its
 * replica, opened with flags. Neither becomes our controlling terminal. Linux's devpts gives the
 * replica its mode and owner itself: grantpt, which would look up a group, is not needed. */
static int pseudo_terminal(int *replica_fd, int flags) {
    char name[64];
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || unlockpt(master) < 0 || ptsname_r(master, name, sizeof name) != 0) fail("a terminal");
    if ((*replica_fd = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC | flags)) < 0) fail("a terminal");
    return master;
}

/* Whether a reader of this kernel's terminals gets an end of file from the EOF character, tried on a
 * terminal of its own (a new one reads by lines, Ctrl-D its EOF character): Linux's do; gVisor's
 * (runsc 20221219) never return 0 from a read, and would hold input back behind the EOF character. */
static int terminals_end_input(void) {
    int probe, master = pseudo_terminal(&probe, O_NONBLOCK);
    char eof = CEOF, byte;
    int ends = write(master, &eof, 1) == 1 && read(probe, &byte, 1) == 0;
    close(probe);
    close(master);
    return ends;
}

/* The program's terminal: its master (ours), its replica in replica. */
static int open_terminal(void) {
    int master = pseudo_terminal(&replica, 0);
    struct termios settings;
    struct winsize size = {TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0};
    /* The program's, as a login's terminal is its user's: it may reopen it (/dev/stdin, /dev/stdout). */
    if (fchown(replica, SANDBOX_UID, -1) < 0 || tcgetattr(replica, &settings) < 0) fail("a terminal");
    settings.c_iflag = 0;      /* no translation of carriage returns or newlines, no flow control */
    settings.c_oflag = 0;      /* output as written */
    settings.c_lflag = ICANON; /* input by lines; no echo, no signals from input, no editing */
    memset(settings.c_cc, 0, sizeof settings.c_cc); /* every special character off (0 disables one) */
    settings.c_cc[VEOF] = CEOF;
    settings.c_cc[VMIN] = 1;
    if (tcsetattr(replica, TCSANOW, &settings) < 0 || ioctl(replica, TIOCSWINSZ, &size) < 0) fail("setting up a terminal");
    return master;
}

/* Reads a run's STDIN and program from our stdin and runs it; with LIVE, stdin is a pipe (or a
 * terminal) fed as it comes. */
/* The egress forwarder (with CODERUND_EGRESS, the path of the worker's proxy socket in the
 * container): it listens on 127.0.0.1:EGRESS_PORT, the proxy address the program's environment names,
 * and hands each connection's bytes both ways to that socket, unread. The container has no network of
 * its own: this is its only way out, and the worker's proxy decides what it reaches. It runs as the
 * program's identity under its seccomp filter, one process per connection: a program that kills it
 * only loses its own way out. */
static void splice_both(int a, int b) {
    static char buf[2][EGRESS_BUFFER];
    int fd[2] = {a, b}, eof[2] = {0, 0};
    size_t len[2] = {0, 0}, off[2] = {0, 0}; /* direction i: from fd[i] to fd[1 - i] */
    fcntl(a, F_SETFL, O_NONBLOCK);
    fcntl(b, F_SETFL, O_NONBLOCK);
    for (;;) {
        struct pollfd p[2] = {{a, 0, 0}, {b, 0, 0}};
        for (int i = 0; i < 2; i++) {
            if (off[i] < len[i]) p[1 - i].events |= POLLOUT;
            else if (!eof[i]) p[i].events |= POLLIN;
        }
        if (!p[0].events && !p[1].events) return;
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        for (int i = 0; i < 2; i++) {
            if (off[i] < len[i]) {
                if (!p[1 - i].revents) continue;
                ssize_t n = send(fd[1 - i], buf[i] + off[i], len[i] - off[i], MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN && errno != EINTR) return;
                if (n > 0 && (off[i] += (size_t)n) == len[i]) off[i] = len[i] = 0;
            } else if (!eof[i] && p[i].revents) {
                ssize_t n = recv(fd[i], buf[i], EGRESS_BUFFER, 0);
                if (n < 0 && errno != EAGAIN && errno != EINTR) return;
                if (n == 0) {
                    eof[i] = 1;
                    shutdown(fd[1 - i], SHUT_WR);
                } else if (n > 0) {
                    len[i] = (size_t)n;
                }
            }
        }
    }
}

static void forward(int client, const char *path) {
    struct sockaddr_un proxy = {.sun_family = AF_UNIX};
    strncpy(proxy.sun_path, path, sizeof proxy.sun_path - 1);
    int up = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (up < 0 || connect(up, (struct sockaddr *)&proxy, sizeof proxy) < 0) {
        fprintf(stderr, "coderund-supervise: egress: %s: %s\n", path, strerror(errno));
        return;
    }
    splice_both(client, up);
}

static int egress_listener(void) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(EGRESS_PORT),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(listener, (struct sockaddr *)&address, sizeof address) < 0 || listen(listener, 128) < 0)
        fail("egress: listening on 127.0.0.1");
    return listener;
}

/* Serves for good as the program's identity, in a process of its own. */
static void serve_egress(int listener, const char *path) {
    /* Nothing of ours but the listener and stderr: not the report stream, nor a program's pipes. */
    int null = open("/dev/null", O_RDWR);
    if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(listener, 3) < 0) fail("egress: descriptors");
    for (int fd = 4; fd < 1024; fd++) close(fd);
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    sigaction(SIGCHLD, &ignore, NULL); /* connections' processes are reaped by the kernel */
    sigaction(SIGPIPE, &ignore, NULL);
    become_program();
    for (;;) {
        int client = accept4(3, NULL, NULL, SOCK_CLOEXEC);
        if (client < 0) continue;
        pid_t pid = fork();
        if (pid == 0) {
            close(3);
            forward(client, path);
            _exit(0);
        }
        close(client);
    }
}

/* Each run's forwarder, listening before the program starts (the last one died with the last run). */
static void start_egress(void) {
    const char *path = getenv("CODERUND_EGRESS");
    if (!path || !*path) return;
    int listener = egress_listener();
    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) serve_egress(listener, path);
    close(listener);
}

static void run(long wall_ms, size_t output_cap, int collect, int terminal) {
    start_egress();
    int in, out, ours, ends[2];
    if (live) {
        if (terminal) {
            ours = open_terminal();
            out = replica;
            input_terminal = terminals_end_input();
        } else {
            if (pipe2(ends, O_CLOEXEC)) fail("pipe");
            ours = ends[0];
            out = ends[1];
        }
        if (input_terminal) {
            in = replica;
            if ((pending.fd = dup(ours)) < 0) fail("dup");
        } else {
            if (pipe2(ends, O_CLOEXEC)) fail("pipe");
            in = ends[0];
            pending.fd = ends[1];
        }
        fcntl(pending.fd, F_SETFL, O_NONBLOCK);
        signal(SIGPIPE, SIG_IGN); /* a program that closes its stdin makes our write fail, not kill us */
        long n = item_length();
        pending.data = malloc((size_t)n + 1);
        if (!pending.data || (n && fread(pending.data, 1, (size_t)n, stdin) != (size_t)n)) fail("stdin");
        pending.len = (size_t)n;
    } else {
        in = memfd_create("stdin", MFD_CLOEXEC);
        if (in < 0 || pipe2(ends, O_CLOEXEC)) fail("memfd_create");
        item_to(in);
        lseek(in, 0, SEEK_SET);
        out = ends[1];
        ours = ends[0];
    }
    long words = number();
    if (words < 1 || words > 4096) fail("program");
    char **program = calloc((size_t)words + 1, sizeof *program);
    if (!program) fail("calloc");
    for (long i = 0; i < words; i++) program[i] = item();
    run_program(wall_ms, output_cap, collect, in, out, ours, program);
    for (long i = 0; i < words; i++) free(program[i]);
    free(program);
}

/* ---- between runs (MULTI): nothing of one run is left for the next ---- */

/* Empties the folder dirfd (and closes it), whatever modes its content was left with: we run as
 * the identity that made all of it. A few passes, as removing entries may hide others from one. */
static void empty(int dirfd) {
    for (int pass = 0; pass < 3; pass++) {
        int fd = dup(dirfd);
        DIR *dir = fd >= 0 && lseek(fd, 0, SEEK_SET) == 0 ? fdopendir(fd) : NULL;
        if (!dir) {
            if (fd >= 0) close(fd);
            break;
        }
        int left = 0;
        struct dirent *entry;
        while ((entry = readdir(dir))) {
            const char *name = entry->d_name;
            if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
            struct stat st;
            if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
            if (S_ISDIR(st.st_mode)) {
                fchmodat(dirfd, name, 0700, 0);
                int sub = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub >= 0) empty(sub);
            }
            if (unlinkat(dirfd, name, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) < 0) left++;
        }
        closedir(dir);
        if (!left) break;
    }
    close(dirfd);
}

/* System V IPC objects a run made. Linux lists them in /proc/sysvipc. gVisor does not, but hands
 * out each kind's ids in increasing order: a fresh object's id (a probe, made and removed at once)
 * bounds the ids a run could have made since the last probe, and each of those is removed. */
static void ipc_remove(int kind, int id) {
    if (kind == 0) shmctl(id, IPC_RMID, NULL);
    else if (kind == 1) semctl(id, 0, IPC_RMID);
    else msgctl(id, IPC_RMID, NULL);
}

static int ipc_probe(int kind) {
    int id = kind == 0 ? shmget(IPC_PRIVATE, 1, 0600) : kind == 1 ? semget(IPC_PRIVATE, 1, 0600) : msgget(IPC_PRIVATE, 0600);
    if (id >= 0) ipc_remove(kind, id);
    return id;
}

static int ipc_last[3] = {-1, -1, -1}; /* the last probe's id of each kind */

/* As the program's identity, which owns what the run made; leaves the new probes in ipc_last. */
static void remove_ipc(void) {
    const char *lists[] = {"/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg"};
    for (int kind = 0; kind < 3; kind++) {
        FILE *f = fopen(lists[kind], "r");
        if (f) {
            char line[512];
            long key, id;
            if (fgets(line, sizeof line, f)) { /* the column names, then an object a line */
                while (fgets(line, sizeof line, f) && sscanf(line, "%ld %ld", &key, &id) == 2) ipc_remove(kind, (int)id);
            }
            fclose(f);
            continue;
        }
        int probe = ipc_probe(kind);
        for (int id = ipc_last[kind] + 1; id < probe; id++) ipc_remove(kind, id);
        ipc_last[kind] = probe;
    }
}

/* Kills what the run left, then empties what it could write as the program's own identity (which
 * owns every file and IPC object the run made, whatever their modes), and lays the work folder anew.
 * Only our effective ids change, and back, without a fork: nothing of the run is left to act on us
 * meanwhile (every other process in the container is gone, or dying of SIGKILL, which it cannot
 * outlive to run again). */
static void wipe(void) {
    /* Only the container's own: as its first process, kill(-1) reaches every other process in it,
     * and /tmp, /dev/shm and the IPC namespace are the container's. (Anywhere else, the work folder.) */
    int contained = getpid() == 1;
    if (contained) {
        kill(-1, SIGKILL);
        reap_all();
    }
    if (setegid(SANDBOX_UID) < 0 || seteuid(SANDBOX_UID) < 0) fail("taking the program's identity to empty the sandbox");
    const char *writable[] = {".", "/tmp", "/dev/shm"};
    for (int i = 0; i < (contained ? 3 : 1); i++) {
        int fd = open(writable[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) empty(fd);
    }
    if (contained) remove_ipc();
    if (seteuid(0) < 0 || setegid(0) < 0) fail("taking back our identity");
    prctl(PR_SET_DUMPABLE, 0); /* a change of effective ids resets it: not dumpable, as before */
    lay_again();
}

int main(int argc, char **argv) {
    /* Not dumpable, besides being another identity: nothing may ptrace us or open /proc/1/fd. */
    prctl(PR_SET_DUMPABLE, 0);
    umask(022);
    /* A stateful sandbox's hub starts the forwarder alone, once. */
    if (argc == 2 && strcmp(argv[1], "--egress") == 0 && getenv("CODERUND_EGRESS")) {
        serve_egress(egress_listener(), getenv("CODERUND_EGRESS"));
    }
    if (argc != 2 || chdir(argv[1]) < 0) fail("usage: supervise WORK_FOLDER | supervise --egress");
    /* Unbuffered: what follows the request on our stdin (live input) is read only when polled for. */
    setvbuf(stdin, NULL, _IONBF, 0);
    char *magic = item();
    if (strcmp(magic, "coderund-5") != 0) {
        errno = 0;
        fail("not a coderund request");
    }
    long wall_ms = number();
    size_t output_cap = (size_t)number();
    int collect = number() != 0;
    live = number() != 0;
    int terminal = number() != 0 && live;
    int multi = number() != 0 && !collect && !live;
    for (int i = 0; i < 3; i++) run_limits[i] = number();
    long files = number();
    if (files > 100000) fail("files");
    if (multi && !(kept = calloc((size_t)files + 1, sizeof *kept))) fail("calloc");
    for (; files > 0; files--) receive_file(multi);
    give_folders();
    if (multi && getpid() == 1) {
        for (int kind = 0; kind < 3; kind++) ipc_last[kind] = ipc_probe(kind);
    }
    if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK)) fail("pipe");
    struct sigaction sa = {0};
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) {
        run(wall_ms, output_cap, collect, terminal);
        if (!multi) return 0;
        wipe();
        int c = getchar();
        if (c == EOF) return 0;
        ungetc(c, stdin);
    }
}
