/*
 * berth-spawner: starts @berth/host's commands for a Node process, so that the Node process does
 * not fork itself for each one.
 *
 * Why: Node 20's libuv starts a child with fork(), whose cost in the parent grows with the
 * parent's memory (its page tables are copied): ~2.6 ms of blocked event loop at 50 MB of RSS,
 * ~7 ms at 125 MB, ~10 ms at 350 MB, for every command. This process is small and starts
 * commands with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK), no copy), relaying their
 * output and exit back to the runner. The runner keeps every policy (timeouts, aborts, output
 * limits, secrets); this program only spawns, relays, signals and reaps.
 *
 * Protocol (all integers little-endian; every frame is [type u8][body length u32][body]):
 *   from the runner, on stdin:
 *     'R' run:  u32 id, u32 flags (1: input follows; else stdin is /dev/null), u32 timeout_ms
 *               (the runner's timeout of the command, 0: none; see "orphaned" below), str cwd,
 *               u32 argc, str argv[argc] (argv[0] is the file, looked up in the command's own
 *               PATH as Node does), u32 envc, str env[envc] ("NAME=value"), [u32 len, bytes input]
 *     'K' kill: u32 id, u32 signal
 *     (str = u32 length + bytes, no NUL)
 *   to the runner, on stdout:
 *     'P' started: u32 id, i32 pid, u64 start time (/proc/<pid>/stat field 22, read before this
 *         program can reap it, so it is the command's own; 0 when it could not be read)
 *     'F' not started: u32 id, i32 errno (no other frame follows for that id)
 *     'O' / 'E' output: u32 id, bytes (the command's stdout / stderr, as read)
 *     'X' ended: u32 id, i32 exit code (-1 when killed), i32 signal (0 when it exited);
 *         sent once the command exited AND closed both output pipes (Node's 'close').
 * Orphaned: when stdin ends (the runner's process exited or died), this program starts nothing
 * more and closes its end of the commands' output pipes (one that writes dies of SIGPIPE, as a
 * command Node spawned did when Node was killed), but stays until every command it started has
 * exited; a command still running at its timeout gets SIGTERM, and SIGKILL 2 s later, as the runner
 * would have done. Only then does it exit. So while a dead berth's commands
 * run, a process can be found that stands for them: this program's command line names the process
 * it was started for (`berth-spawner --for <pid>:<start time>`), and berth's liveness checks (lock
 * files, in-flight markers, operation owners) count a dead holder as alive while it runs. A berth
 * SIGKILLed in the middle of an `iscsiadm --logout` thus keeps its target lock until the logout
 * ended: no other process acts on the target meanwhile. (Before, this program exited at once and
 * the commands went on unseen, re-parented, after their berth's locks were broken.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  uint32_t id;
  pid_t pid; /* 0 once reaped */
  int out, err, in; /* -1 when closed */
  char *input;
  size_t input_len, input_off;
  int status;
  int reaped;
  uint32_t timeout_ms; /* 0: none */
  int64_t started_ms;  /* CLOCK_MONOTONIC */
  int signalled;       /* orphaned: 1 after SIGTERM at the timeout, 2 after SIGKILL */
} job_t;

static job_t *jobs;
static size_t njobs, capjobs;
static int stdin_open = 1;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* After SIGTERM at its timeout, an orphaned command that ignores it gets SIGKILL this much later
 * (the runner's FORCE_KILL_AFTER_MS). */
#define FORCE_KILL_AFTER_MS 2000

static void die(const char *what) {
  (void)!write(2, what, strlen(what));
  (void)!write(2, "\n", 1);
  _exit(70);
}

static void *grow(void *p, size_t n) {
  void *q = realloc(p, n);
  if (!q) die("berth-spawner: out of memory");
  return q;
}

/* Write all of `buf` to stdout; once the runner is gone (EPIPE), output has nowhere to go. */
static int out_broken;
static void write_all(const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0 && !out_broken) {
    ssize_t n = write(1, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      out_broken = 1;
      return;
    }
    p += n;
    len -= (size_t)n;
  }
}

static void put_u32(char *p, uint32_t v) {
  p[0] = (char)(v & 0xff);
  p[1] = (char)((v >> 8) & 0xff);
  p[2] = (char)((v >> 16) & 0xff);
  p[3] = (char)((v >> 24) & 0xff);
}

static void frame(char type, uint32_t id, const void *payload, size_t len) {
  if (out_broken) return;
  char head[9];
  head[0] = type;
  put_u32(head + 1, (uint32_t)(4 + len));
  put_u32(head + 5, id);
  /* One system call for the frame when the pipe takes it whole; the rest written in order. */
  struct iovec iov[2] = {{head, sizeof head}, {(void *)payload, len}};
  ssize_t n;
  do n = writev(1, iov, len > 0 ? 2 : 1);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    out_broken = 1;
    return;
  }
  size_t done = (size_t)n;
  if (done < sizeof head) {
    write_all(head + done, sizeof head - done);
    done = sizeof head;
  }
  if (done - sizeof head < len) write_all((const char *)payload + (done - sizeof head), len - (done - sizeof head));
}

static void frame2(char type, uint32_t id, int32_t a, int32_t b, int two) {
  char body[8];
  put_u32(body, (uint32_t)a);
  put_u32(body + 4, (uint32_t)b);
  frame(type, id, body, two ? 8 : 4);
}

/*
 * A started command's start time (/proc/<pid>/stat field 22, clock ticks since boot). Read here,
 * before this program reaps it, the pid still names the command (alive or a zombie), so the runner
 * can tell it from a process that reuses the pid later. 0 when /proc cannot be read.
 */
static uint64_t start_ticks(pid_t pid) {
  char path[32] = "/proc/";
  char digits[16];
  int n = 0;
  for (unsigned v = (unsigned)pid; n == 0 || v > 0; v /= 10) digits[n++] = (char)('0' + v % 10);
  size_t at = strlen(path);
  while (n > 0) path[at++] = digits[--n];
  memcpy(path + at, "/stat", 6);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  ssize_t got = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (got <= 0) return 0;
  buf[got] = '\0';
  char *p = strrchr(buf, ')');
  if (p == NULL || p[1] != ' ') return 0;
  p += 2; /* field 3, the state */
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (p == NULL) return 0;
    p++;
  }
  return strtoull(p, NULL, 10);
}

static job_t *find(uint32_t id) {
  for (size_t i = 0; i < njobs; i++)
    if (jobs[i].id == id) return &jobs[i];
  return NULL;
}

/* ---- reading requests ---- */

typedef struct {
  const char *p, *end;
  int bad;
} reader_t;

static uint32_t rd_u32(reader_t *r) {
  if (r->end - r->p < 4) {
    r->bad = 1;
    return 0;
  }
  const unsigned char *u = (const unsigned char *)r->p;
  r->p += 4;
  return (uint32_t)u[0] | ((uint32_t)u[1] << 8) | ((uint32_t)u[2] << 16) | ((uint32_t)u[3] << 24);
}

/* A string as a fresh NUL-terminated copy. */
static char *rd_str(reader_t *r) {
  uint32_t len = rd_u32(r);
  if (r->bad || (size_t)(r->end - r->p) < len) {
    r->bad = 1;
    return NULL;
  }
  char *s = grow(NULL, (size_t)len + 1);
  memcpy(s, r->p, len);
  s[len] = '\0';
  r->p += len;
  return s;
}

static void free_strs(char **v, uint32_t n) {
  if (!v) return;
  for (uint32_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

/*
 * posix_spawn of one file; a file the kernel cannot execute (ENOEXEC: a script without `#!`) runs
 * with /bin/sh, as glibc's execvp (which Node's spawn ends in) does.
 */
static int spawn_file(pid_t *pid, const char *file, char **argv, char **envp, posix_spawn_file_actions_t *fa, posix_spawnattr_t *at) {
  int rc = posix_spawn(pid, file, fa, at, argv, envp);
  if (rc != ENOEXEC) return rc;
  size_t argc = 0;
  while (argv[argc]) argc++;
  char **shv = grow(NULL, sizeof(char *) * (argc + 2));
  shv[0] = "/bin/sh";
  shv[1] = (char *)file;
  for (size_t i = 1; i <= argc; i++) shv[i + 1] = argv[i];
  rc = posix_spawn(pid, "/bin/sh", fa, at, shv, envp);
  free(shv);
  return rc == 0 ? 0 : ENOEXEC;
}

/*
 * Start argv[0] with posix_spawn, looking it up as libuv does: a name with a '/' is used as it
 * is; otherwise each directory of the command's own PATH (default /bin:/usr/bin) is tried in
 * turn, going on past ENOENT, ENOTDIR and EACCES (EACCES is reported when nothing else ran). A
 * directory the file is not in is found so by a stat, without a spawn.
 */
static int spawn_in_path(pid_t *pid, char **argv, char **envp, posix_spawn_file_actions_t *fa, posix_spawnattr_t *at) {
  const char *file = argv[0];
  if (file[0] == '\0') return ENOENT;
  if (strchr(file, '/')) return spawn_file(pid, file, argv, envp, fa, at);
  const char *path = "/bin:/usr/bin";
  for (char **e = envp; *e; e++) {
    /* The first PATH, as getenv() takes it. */
    if (strncmp(*e, "PATH=", 5) == 0) {
      path = *e + 5;
      break;
    }
  }
  size_t flen = strlen(file);
  int seen_eacces = 0;
  const char *p = path;
  for (;;) {
    const char *colon = strchr(p, ':');
    size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
    char *full = grow(NULL, dlen + flen + 3);
    if (dlen == 0) {
      memcpy(full, "./", 2);
      memcpy(full + 2, file, flen + 1);
    } else {
      memcpy(full, p, dlen);
      full[dlen] = '/';
      memcpy(full + dlen + 1, file, flen + 1);
    }
    /* A directory without the file costs a stat, not a posix_spawn (a clone and a failed exec). */
    struct stat st;
    int rc = stat(full, &st) != 0 && (errno == ENOENT || errno == ENOTDIR) ? errno : spawn_file(pid, full, argv, envp, fa, at);
    free(full);
    if (rc == 0) return 0;
    if (rc == EACCES) seen_eacces = 1;
    else if (rc != ENOENT && rc != ENOTDIR) return rc;
    if (!colon) break;
    p = colon + 1;
  }
  return seen_eacces ? EACCES : ENOENT;
}

static void run_request(reader_t *r) {
  uint32_t id = rd_u32(r);
  uint32_t flags = rd_u32(r);
  uint32_t timeout_ms = rd_u32(r);
  char *cwd = rd_str(r);
  uint32_t argc = rd_u32(r);
  if (r->bad || argc == 0 || argc > (1u << 20)) die("berth-spawner: bad run request");
  char **argv = grow(NULL, sizeof(char *) * ((size_t)argc + 1));
  for (uint32_t i = 0; i < argc; i++) argv[i] = rd_str(r);
  argv[argc] = NULL;
  uint32_t envc = rd_u32(r);
  if (r->bad || envc > (1u << 20)) die("berth-spawner: bad run request");
  char **envp = grow(NULL, sizeof(char *) * ((size_t)envc + 1));
  for (uint32_t i = 0; i < envc; i++) envp[i] = rd_str(r);
  envp[envc] = NULL;
  char *input = NULL;
  size_t input_len = 0;
  if (flags & 1) {
    input_len = rd_u32(r);
    if (r->bad || (size_t)(r->end - r->p) < input_len) die("berth-spawner: bad run request");
    input = grow(NULL, input_len > 0 ? input_len : 1);
    memcpy(input, r->p, input_len);
    r->p += input_len;
  }
  if (r->bad) die("berth-spawner: bad run request");

  int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1};
  int rc = 0;
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) rc = errno;
  if (rc == 0) {
    if (flags & 1) {
      if (pipe2(in, O_CLOEXEC) != 0) rc = errno;
    } else {
      in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (in[0] < 0) rc = errno;
    }
  }
  pid_t pid = 0;
  int cwd_fd = -1;
  if (rc == 0) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    if (cwd[0] != '\0') {
      /* A directory that went away (or cannot be entered) is not the command's failure: it then
       * runs in this program's directory, as Node's spawn would run it in the removed one. */
      cwd_fd = open(cwd, O_PATH | O_DIRECTORY | O_CLOEXEC);
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 29)
      if (cwd_fd >= 0) posix_spawn_file_actions_addfchdir_np(&fa, cwd_fd);
#else
      if (cwd_fd >= 0) rc = ENOSYS; /* the runner starts it with Node instead */
#endif
    }
    /* The command starts as Node would start it: no signal blocked, every signal at its default. */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
#if defined(__GLIBC__) && ULONG_MAX > 0xffffffffUL
    /* sigfillset leaves out glibc's own two signals (32, 33), which posix_spawn would then set to
     * SIG_IGN in the command; a Node-spawned command has them at their default. */
    ((unsigned long *)(void *)&all)[0] |= (1UL << 31) | (1UL << 32);
#endif
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    /* Its own process group: a terminal's Ctrl-C (SIGINT to the foreground group) reaches berth,
     * which cancels and rolls back, never the command half-way through (a `losetup --detach`
     * killed by it could not say what it had done). The runner still signals it by pid. */
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
    if (rc == 0) rc = spawn_in_path(&pid, argv, envp, &fa, &at);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
  }
  if (cwd_fd >= 0) close(cwd_fd);
  /* The child's ends are its own now (or nobody's). */
  if (out[1] >= 0) close(out[1]);
  if (err[1] >= 0) close(err[1]);
  if (in[0] >= 0) close(in[0]);
  free(cwd);
  free_strs(argv, argc);
  free_strs(envp, envc);
  if (rc != 0) {
    if (out[0] >= 0) close(out[0]);
    if (err[0] >= 0) close(err[0]);
    if (in[1] >= 0) close(in[1]);
    free(input);
    frame2('F', id, rc, 0, 0);
    return;
  }
  if (njobs == capjobs) {
    capjobs = capjobs ? capjobs * 2 : 16;
    jobs = grow(jobs, sizeof(job_t) * capjobs);
  }
  job_t *j = &jobs[njobs++];
  memset(j, 0, sizeof *j);
  j->id = id;
  j->pid = pid;
  j->out = out[0];
  j->err = err[0];
  j->in = in[1];
  j->input = input;
  j->input_len = input_len;
  j->timeout_ms = timeout_ms;
  j->started_ms = now_ms();
  if (j->in >= 0) {
    fcntl(j->in, F_SETFL, fcntl(j->in, F_GETFL) | O_NONBLOCK);
    if (input_len == 0) {
      close(j->in);
      j->in = -1;
    }
  }
  uint64_t ticks = start_ticks(pid);
  char body[12];
  put_u32(body, (uint32_t)pid);
  put_u32(body + 4, (uint32_t)(ticks & 0xffffffffu));
  put_u32(body + 8, (uint32_t)(ticks >> 32));
  frame('P', id, body, sizeof body);
}

static void kill_request(reader_t *r) {
  uint32_t id = rd_u32(r);
  uint32_t sig = rd_u32(r);
  if (r->bad) die("berth-spawner: bad kill request");
  job_t *j = find(id);
  /* A reaped pid may belong to someone else already: only a live child is signalled. */
  if (j && !j->reaped) kill(j->pid, (int)sig);
}

static char *inbuf;
static size_t inlen, incap;

/* The runner is gone: nobody reads the commands' output any more (see "Orphaned" above). */
static void orphaned(void) {
  stdin_open = 0;
  for (size_t i = 0; i < njobs; i++) {
    if (jobs[i].out >= 0) close(jobs[i].out);
    if (jobs[i].err >= 0) close(jobs[i].err);
    jobs[i].out = jobs[i].err = -1;
  }
}

static void read_requests(void) {
  if (incap - inlen < 65536) {
    incap = incap ? incap * 2 : 131072;
    inbuf = grow(inbuf, incap);
  }
  ssize_t n = read(0, inbuf + inlen, incap - inlen);
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN) return;
    orphaned();
    return;
  }
  if (n == 0) {
    orphaned();
    return;
  }
  inlen += (size_t)n;
  size_t off = 0;
  while (inlen - off >= 5) {
    const unsigned char *h = (const unsigned char *)inbuf + off;
    uint32_t len = (uint32_t)h[1] | ((uint32_t)h[2] << 8) | ((uint32_t)h[3] << 16) | ((uint32_t)h[4] << 24);
    if (inlen - off - 5 < len) break;
    reader_t r = {inbuf + off + 5, inbuf + off + 5 + len, 0};
    if (h[0] == 'R') run_request(&r);
    else if (h[0] == 'K') kill_request(&r);
    else die("berth-spawner: unknown request");
    off += 5 + (size_t)len;
  }
  memmove(inbuf, inbuf + off, inlen - off);
  inlen -= off;
}

/* ---- children ---- */

static void drain(job_t *j, int *fd, char type) {
  char buf[65536];
  ssize_t n = read(*fd, buf, sizeof buf);
  if (n > 0) {
    frame(type, j->id, buf, (size_t)n);
    return;
  }
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  close(*fd);
  *fd = -1;
}

static void feed(job_t *j) {
  while (j->input_off < j->input_len) {
    ssize_t n = write(j->in, j->input + j->input_off, j->input_len - j->input_off);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      break; /* EPIPE: it exited without reading its input, which is not its failure */
    }
    j->input_off += (size_t)n;
  }
  close(j->in);
  j->in = -1;
}

static void reap(void) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (size_t i = 0; i < njobs; i++) {
      if (jobs[i].pid == pid && !jobs[i].reaped) {
        jobs[i].reaped = 1;
        jobs[i].status = status;
      }
    }
  }
}

/* Jobs that exited and closed both pipes are reported and forgotten. */
static void finish_done(void) {
  size_t k = 0;
  for (size_t i = 0; i < njobs; i++) {
    job_t *j = &jobs[i];
    if (j->reaped && j->out < 0 && j->err < 0) {
      if (j->in >= 0) close(j->in);
      free(j->input);
      int code = WIFEXITED(j->status) ? WEXITSTATUS(j->status) : -1;
      int sig = WIFSIGNALED(j->status) ? WTERMSIG(j->status) : 0;
      frame2('X', j->id, code, sig, 1);
      continue;
    }
    if (k != i) jobs[k] = *j;
    k++;
  }
  njobs = k;
}

/*
 * Orphaned: a command past its timeout gets SIGTERM, and SIGKILL FORCE_KILL_AFTER_MS later.
 * Returns how long poll() may sleep before the next such moment (-1: no command has one).
 */
static int orphan_deadlines(void) {
  int64_t now = now_ms();
  int64_t next = -1;
  for (size_t i = 0; i < njobs; i++) {
    job_t *j = &jobs[i];
    if (j->reaped || j->timeout_ms == 0 || j->signalled >= 2) continue;
    int64_t at = j->started_ms + j->timeout_ms + (j->signalled == 1 ? FORCE_KILL_AFTER_MS : 0);
    if (at <= now) {
      kill(j->pid, j->signalled == 0 ? SIGTERM : SIGKILL);
      j->signalled += 1;
      if (j->signalled >= 2) continue;
      at = now + FORCE_KILL_AFTER_MS;
    }
    if (next < 0 || at - now < next) next = at - now;
  }
  return next < 0 ? -1 : (int)(next > INT_MAX ? INT_MAX : next);
}

/* Every command this program started has exited (orphaned: then it may go). */
static int all_reaped(void) {
  for (size_t i = 0; i < njobs; i++)
    if (!jobs[i].reaped) return 0;
  return 1;
}

int main(void) {
  /* The runner's own signals are for the runner: Ctrl-C in a terminal reaches the whole process
   * group, and berth decides what its commands get (a graceful stop lets them finish). A hangup (an
   * ssh session that drops) or a SIGTERM to the whole group (`kill -- -PGID`, a service manager)
   * ends berth and reaches the commands too; this program must outlive them, standing for them
   * until they exited (see "Orphaned"), so it ignores those as well: SIGKILL ends it. */
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0) die("berth-spawner: sigprocmask");
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) die("berth-spawner: signalfd");

  struct pollfd *pfd = NULL;
  size_t pcap = 0;
  for (;;) {
    /* Orphaned (no runner any more): go once every command exited. Output pipes a command's own
     * children (a daemon it started) keep open are not waited for. */
    if (!stdin_open && all_reaped()) break;
    int timeout = stdin_open ? -1 : orphan_deadlines();
    size_t need = 2 + njobs * 3;
    if (need > pcap) {
      pcap = need * 2;
      pfd = grow(pfd, sizeof(struct pollfd) * pcap);
    }
    size_t n = 0;
    pfd[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    pfd[n++] = (struct pollfd){.fd = stdin_open ? 0 : -1, .events = POLLIN};
    for (size_t i = 0; i < njobs; i++) {
      pfd[n++] = (struct pollfd){.fd = jobs[i].out, .events = POLLIN};
      pfd[n++] = (struct pollfd){.fd = jobs[i].err, .events = POLLIN};
      pfd[n++] = (struct pollfd){.fd = jobs[i].in, .events = POLLOUT};
    }
    if (poll(pfd, n, timeout) < 0) {
      if (errno == EINTR) continue;
      die("berth-spawner: poll");
    }
    if (pfd[0].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0) {
      }
      reap();
    }
    /* Children first (their fds are indexed by the jobs as they were when polled), then requests,
     * which may add jobs. */
    size_t polled = njobs;
    for (size_t i = 0; i < polled; i++) {
      job_t *j = &jobs[i];
      struct pollfd *o = &pfd[2 + i * 3];
      if (o[0].revents && j->out >= 0) drain(j, &j->out, 'O');
      if (o[1].revents && j->err >= 0) drain(j, &j->err, 'E');
      if (o[2].revents && j->in >= 0) feed(j);
    }
    if (pfd[1].revents) read_requests();
    reap();
    finish_done();
  }
  return 0;
}
