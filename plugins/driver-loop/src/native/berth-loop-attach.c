/*
 * berth-loop-attach FILE [--direct-io] [--read-only]
 *
 * Attach FILE (an absolute, real path) to a loop device in one process, or name the loop device
 * that already backs it: what the loop driver otherwise asks of three losetup runs (`--list`,
 * `--find --show`, `--list` again, ~6 ms each through berth's runner). Here:
 *
 *   1. open FILE read-write (read-only with --read-only; O_DIRECT with --direct-io), as losetup
 *      does; unlike losetup it never falls back to read-only when the file may not be written
 *      (EROFS, EACCES): that is `failed open ERRNO`, and berth refuses a read-write connect that
 *      would give a read-only device; fstat it: its device and inode are what a device backing it holds;
 *   2. open /dev/loop-control and take an exclusive flock on it until the end: two runs of this
 *      program (two berth processes attaching the same file) cannot both find the file unattached
 *      and attach it twice. Held for the walk and the configure only (microseconds); systemd's
 *      loop-util takes the same lock around its own allocation;
 *   3. walk /sys/block/loop*: a device whose loop/backing_file is FILE is opened (O_RDONLY) and
 *      asked LOOP_GET_STATUS64; when it backs the same device and inode with offset 0 and size
 *      limit 0 (the whole file, the only kind berth makes), it is printed as `existing` with its
 *      status and nothing is changed (the driver decides: autoclear or another read-only mode is a
 *      conflict, otherwise it is reused). Unbound devices (no backing_file, ENXIO) are skipped;
 *   4. print `free` (flushed): nothing backs FILE, and what follows may attach it — a run killed
 *      (SIGKILL) after this line and before the last one may have attached it; one killed before
 *      it has changed nothing;
 *   5. LOOP_CTL_GET_FREE, open that /dev/loopN (read-write, or read-only as the file), and
 *      LOOP_CONFIGURE it with the file's descriptor, LO_FLAGS_DIRECT_IO / LO_FLAGS_READ_ONLY as
 *      asked and the name losetup gives (lo_file_name). EBUSY: someone took that free device
 *      first; ask for another after a millisecond, at most MAX_TRIES times;
 *   6. LOOP_GET_STATUS64 and fstat on the same descriptor: the device this program configured,
 *      never a device looked up again by name (the number can be reused once it is closed).
 *
 * Exit status and the last line it prints on stdout (berth reads the line first; `free` may come
 * before it):
 *   0 attached DEV MAJ:MIN BACKING_MAJ:MIN BACKING_INO OFFSET SIZELIMIT FLAGS
 *                           FILE is attached to DEV (made by this run)
 *   3 existing DEV MAJ:MIN BACKING_MAJ:MIN BACKING_INO OFFSET SIZELIMIT FLAGS
 *                           DEV already backs FILE (nothing was done)
 *   7 no-permission         this process may not open the loop devices or configure one
 *                           (nothing was done)
 *   6 undone STEP ERRNO     DEV was configured but its status could not be read back; it was
 *                           detached again (LOOP_CLR_FD on the same descriptor)
 *   8 undo-failed DEV STEP ERRNO CLR_ERRNO
 *                           as `undone`, but LOOP_CLR_FD failed too: DEV may still back FILE
 *                           (berth looks and detaches what backs the file's device and inode)
 *   2 usage, or `failed STEP ERRNO`: a failure that changed nothing (message on stderr);
 *     berth then attaches with losetup, which says it in its own words
 * FLAGS is lo_flags in decimal (1 read-only, 4 autoclear, 16 direct I/O); the inode is printed as
 * decimal text: one above 2^53 must reach berth exactly.
 *
 * Catchable signals are blocked for the whole run: a SIGTERM (berth's runner on a timeout or a
 * cancel, berth-spawner when berth dies) cannot land between the configure and the answer line,
 * so a run berth was told was killed has still printed what it attached.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/loop.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

/* How many times a free device taken by someone else first (EBUSY) is replaced by another. */
#define MAX_TRIES 16

static void print_device(const char *word, const struct loop_info64 *info, dev_t rdev) {
  dev_t backing = (dev_t)info->lo_device;
  printf("%s /dev/loop%" PRIu32 " %u:%u %u:%u %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu32 "\n", word, (uint32_t)info->lo_number, major(rdev), minor(rdev),
         major(backing), minor(backing), (uint64_t)info->lo_inode, (uint64_t)info->lo_offset, (uint64_t)info->lo_sizelimit, (uint32_t)info->lo_flags);
}

/* Nothing was changed: say which step failed. EPERM/EACCES: this process may not do it. */
static int failed(const char *step, const char *what, int error) {
  if (error == EPERM || error == EACCES) {
    printf("no-permission\n");
    fprintf(stderr, "berth-loop-attach: %s %s: %s\n", step, what, strerror(error));
    return 7;
  }
  printf("failed %s %d\n", step, error);
  fprintf(stderr, "berth-loop-attach: %s %s: %s\n", step, what, strerror(error));
  return 2;
}

/* The text of a sysfs attribute without its newline: its length, or -errno. */
static int read_attribute(const char *path, char *buffer, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t length = read(fd, buffer, size - 1);
  int error = errno;
  close(fd);
  if (length < 0) return -error;
  buffer[length] = '\0';
  if (length > 0 && buffer[length - 1] == '\n') buffer[--length] = '\0';
  return (int)length;
}

static int same_file(const struct loop_info64 *info, const struct stat *file) {
  dev_t backing = (dev_t)info->lo_device;
  return major(backing) == major(file->st_dev) && minor(backing) == minor(file->st_dev) && info->lo_inode == (uint64_t)file->st_ino;
}

/*
 * The whole-file loop device that backs `file` already: 1 (info and rdev filled), 0 when there is
 * none, -errno when the walk failed.
 */
static int find_existing(const char *file, const struct stat *st, struct loop_info64 *info, dev_t *rdev) {
  DIR *dir = opendir("/sys/block");
  if (dir == NULL) return -errno;
  static char backing[PATH_MAX + 64];
  int found = 0;
  struct dirent *entry;
  while (found == 0 && (entry = readdir(dir)) != NULL) {
    unsigned number = 0;
    char tail = '\0';
    if (sscanf(entry->d_name, "loop%u%c", &number, &tail) != 1) continue;
    char path[80];
    snprintf(path, sizeof path, "/sys/block/loop%u/loop/backing_file", number);
    int length = read_attribute(path, backing, sizeof backing);
    /* Unbound (no loop/ directory), or being torn down. */
    if (length == -ENOENT || length == -ENXIO || length == -ENODEV) continue;
    if (length < 0) {
      found = length;
      break;
    }
    if (strcmp(backing, file) != 0) continue;
    char node[32];
    snprintf(node, sizeof node, "/dev/loop%u", number);
    int fd = open(node, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT || errno == ENXIO || errno == ENODEV) continue;
      found = -errno;
      break;
    }
    struct loop_info64 now;
    struct stat node_st;
    memset(&now, 0, sizeof now);
    if (ioctl(fd, LOOP_GET_STATUS64, &now) != 0 || fstat(fd, &node_st) != 0) {
      int error = errno;
      close(fd);
      if (error == ENXIO) continue;
      found = -error;
      break;
    }
    close(fd);
    if (now.lo_number == number && same_file(&now, st) && now.lo_offset == 0 && now.lo_sizelimit == 0) {
      *info = now;
      *rdev = node_st.st_rdev;
      found = 1;
    }
  }
  closedir(dir);
  return found;
}

int main(int argc, char **argv) {
  const char *file = NULL;
  int direct_io = 0, read_only = 0, usage = argc < 2;
  for (int i = 1; i < argc && !usage; i++) {
    if (strcmp(argv[i], "--direct-io") == 0) direct_io = 1;
    else if (strcmp(argv[i], "--read-only") == 0) read_only = 1;
    else if (file == NULL && argv[i][0] == '/') file = argv[i];
    else usage = 1;
  }
  if (usage || file == NULL) {
    fprintf(stderr, "usage: berth-loop-attach FILE [--direct-io] [--read-only]\n");
    return 2;
  }

  /* Nothing may stop this run between LOOP_CONFIGURE and the line that names the device. */
  sigset_t hold;
  sigfillset(&hold);
  sigprocmask(SIG_BLOCK, &hold, NULL);

  int mode = read_only ? O_RDONLY : O_RDWR;
  int extra = O_CLOEXEC | (direct_io ? O_DIRECT : 0);
  /* No read-only retry as losetup's: a read-write connect must never give a read-only device. */
  int file_fd = open(file, mode | extra);
  /* The file, not the loop devices: not a question of this program's permission. */
  if (file_fd < 0) {
    int error = errno;
    printf("failed open %d\n", error);
    fprintf(stderr, "berth-loop-attach: open %s: %s\n", file, strerror(error));
    return 2;
  }
  struct stat st;
  if (fstat(file_fd, &st) != 0) return failed("fstat", file, errno);

  int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (control < 0) return failed("open", "/dev/loop-control", errno);
  if (flock(control, LOCK_EX) != 0) return failed("flock", "/dev/loop-control", errno);

  struct loop_info64 info;
  dev_t rdev = 0;
  memset(&info, 0, sizeof info);
  int existing = find_existing(file, &st, &info, &rdev);
  if (existing < 0) return failed("walk", "/sys/block", -existing);
  if (existing == 1) {
    print_device("existing", &info, rdev);
    return 3;
  }

  /* From here on the run may attach: a run killed after this line (SIGKILL) is looked at. */
  printf("free\n");
  fflush(stdout);

  struct loop_config config;
  memset(&config, 0, sizeof config);
  config.fd = (uint32_t)file_fd;
  config.info.lo_flags = (direct_io ? LO_FLAGS_DIRECT_IO : 0) | (mode == O_RDONLY ? LO_FLAGS_READ_ONLY : 0);
  size_t name_length = strlen(file);
  if (name_length >= LO_NAME_SIZE) name_length = LO_NAME_SIZE - 1;
  memcpy(config.info.lo_file_name, file, name_length);

  int device_fd = -1;
  char node[32] = "";
  for (int tries = 0; device_fd < 0; tries++) {
    int number = ioctl(control, LOOP_CTL_GET_FREE);
    if (number < 0) return failed("LOOP_CTL_GET_FREE", "/dev/loop-control", errno);
    snprintf(node, sizeof node, "/dev/loop%d", number);
    device_fd = open(node, mode | O_CLOEXEC);
    if (device_fd < 0) return failed("open", node, errno);
    if (ioctl(device_fd, LOOP_CONFIGURE, &config) == 0) break;
    int error = errno;
    close(device_fd);
    device_fd = -1;
    /* Taken between LOOP_CTL_GET_FREE and LOOP_CONFIGURE (by a losetup): another one. */
    if (error != EBUSY || tries + 1 >= MAX_TRIES) return failed("LOOP_CONFIGURE", node, error);
    /* Let the other configure finish before asking for the next free device. */
    const struct timespec pause = {0, 1000000};
    nanosleep(&pause, NULL);
  }

  struct stat node_st;
  memset(&info, 0, sizeof info);
  int error = 0;
  if (ioctl(device_fd, LOOP_GET_STATUS64, &info) != 0 || fstat(device_fd, &node_st) != 0) error = errno;
  else if (!same_file(&info, &st)) error = ESTALE;
  if (error != 0) {
    /* Not a device berth can name: let go of it again, on the descriptor that configured it. */
    int cleared = ioctl(device_fd, LOOP_CLR_FD, 0) == 0 ? 0 : errno;
    close(device_fd);
    if (cleared != 0) {
      printf("undo-failed %s LOOP_GET_STATUS64 %d %d\n", node, error, cleared);
      fprintf(stderr, "berth-loop-attach: reading back %s: %s; detaching it again: %s\n", node, strerror(error), strerror(cleared));
      return 8;
    }
    printf("undone LOOP_GET_STATUS64 %d\n", error);
    fprintf(stderr, "berth-loop-attach: reading back %s: %s\n", node, strerror(error));
    return 6;
  }
  print_device("attached", &info, node_st.st_rdev);
  return 0;
}
