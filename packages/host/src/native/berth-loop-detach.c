/*
 * berth-loop-detach DEVICE BACKING_MAJ:MIN BACKING_INODE
 *
 * Detach a loop device unless something holds it open, in one process and without walking /proc
 * (what `fuser` does, ~13 ms on a busy host). The kernel's LOOP_CLR_FD never refuses a busy device:
 * it marks it autoclear and detaches it at the last close, so a plain `losetup --detach` of a
 * device a process still uses lets it vanish under that process later. Here:
 *
 *   1. open DEVICE and keep it open: from now on the device cannot be detached or rebound by
 *      anyone else, so what is checked below stays true;
 *   2. LOOP_GET_STATUS64: it must still back the file (device and inode) berth attached, the
 *      whole of it (offset and size limit 0: berth attaches whole files), and not be marked
 *      autoclear already (someone else's deferred detach is left alone);
 *   3. LOOP_SET_CAPACITY, a probe that this process may change the device: step 5 needs
 *      CAP_SYS_ADMIN on a read-only descriptor, and so do this and step 4 (the same check in the
 *      kernel), while LOOP_CLR_FD needs nothing — without the probe a process that may clear but not
 *      restore would do the very harm this prevents. It re-reads the backing file's size, which
 *      for a device sized as its file changes nothing (a file grown behind the device's back is
 *      picked up, as `losetup --set-capacity` would). LOOP_SET_STATUS64 with the status unchanged
 *      would probe the same but freezes the device's queue: ~18 ms a detach here;
 *   4. fsync: write the device's dirty buffers to the file, have the loop driver make the file
 *      durable (the flush it is sent becomes an fsync of the backing file), and learn whether
 *      a write through the device's own page cache (what writes to /dev/loopN itself use, and a
 *      filesystem's metadata buffers) failed on its way to the file — a full or failing
 *      filesystem under the file: the kernel drops such a page and records the error on the
 *      device; a descriptor opened after the failure still reports it when nobody has seen it
 *      yet. A filesystem mounted on the device records its file data's write errors on its own
 *      files, not here: those are the filesystem's to report. Then BLKFLSBUF drops the device's page cache (what `blockdev --flushbufs`
 *      does; it was a process of its own before the detach). BLKFLSBUF alone reports no
 *      write-back error (the kernel answers 0 once the caller may flush), so exit 9 is only an
 *      ioctl the kernel refused, and exit 10 is the lost writes;
 *   5. LOOP_CLR_FD on this descriptor: with no other opener the kernel puts the device in rundown
 *      (6.11+; earlier kernels detach at once) and detaches it when this descriptor closes; with
 *      another opener it only sets autoclear;
 *   6. LOOP_SET_STATUS64 clearing autoclear: refused with ENXIO when the device is running down or
 *      gone (nobody else held it: close, and the device is detached), accepted when another opener
 *      holds it (the device is back as it was: report it busy).
 *
 * Exit status and the one line it prints on stdout (berth reads the line first):
 *   0 detached              the device no longer backs the file (detached at this close)
 *   3 busy                  another opener holds it; it stays attached, autoclear cleared
 *   4 not-attached          the device backs nothing, is being torn down, or its node is gone
 *   5 mismatch MAJ:MIN INO offset OFF sizelimit SIZE
 *                           the device backs another file, or a window of one (nothing was done)
 *   6 autoclear-left ERRNO  detached as busy but autoclear could not be cleared: the kernel will
 *                           detach it at the last close
 *   7 no-permission         this process may not change the device's status (nothing was done)
 *   8 autoclear-set         someone already asked the kernel to detach it at its last close
 *                           (nothing was done)
 *   9 flush-failed ERRNO    the kernel refused the flush: it stays attached as it was,
 *                           nothing detached
 *  10 writeback-failed ERRNO
 *                           writes through the device did not reach the file (ENOSPC, EIO…):
 *                           the data is not in the volume; it stays attached as it was, nothing
 *                           detached. The kernel reports a lost write once: this run saw it
 *   2 usage or a failure before anything changed (message on stderr)
 *
 * Catchable signals are blocked for the whole run, so a SIGTERM cannot land between steps 5 and 6.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/loop.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static int parse_u64(const char *text, uint64_t *out) {
  char *end = NULL;
  errno = 0;
  unsigned long long value = strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') return -1;
  *out = (uint64_t)value;
  return 0;
}

/* A step before the detach failed: nothing was changed. ENXIO: the device backs nothing. */
static int failed_before(int fd, int error, const char *what, const char *device) {
  close(fd);
  if (error == ENXIO) {
    printf("not-attached\n");
    return 4;
  }
  fprintf(stderr, "berth-loop-detach: %s %s: %s\n", what, device, strerror(error));
  return 2;
}

/* Clear autoclear again, every other field set back as the kernel holds it: 0, or the errno of
   the first ioctl that failed (ENXIO: the device is running down, nobody else held it). */
static int clear_autoclear(int fd) {
  struct loop_info64 now;
  memset(&now, 0, sizeof now);
  if (ioctl(fd, LOOP_GET_STATUS64, &now) != 0) return errno;
  now.lo_flags &= ~(uint32_t)LO_FLAGS_AUTOCLEAR;
  if (ioctl(fd, LOOP_SET_STATUS64, &now) != 0) return errno;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: berth-loop-detach DEVICE BACKING_MAJ:MIN BACKING_INODE\n");
    return 2;
  }
  const char *device = argv[1];
  char *colon = strchr(argv[2], ':');
  uint64_t want_major = 0, want_minor = 0, want_inode = 0;
  if (colon == NULL) {
    fprintf(stderr, "berth-loop-detach: not MAJ:MIN: %s\n", argv[2]);
    return 2;
  }
  *colon = '\0';
  if (parse_u64(argv[2], &want_major) != 0 || parse_u64(colon + 1, &want_minor) != 0 || parse_u64(argv[3], &want_inode) != 0) {
    fprintf(stderr, "berth-loop-detach: bad backing device or inode\n");
    return 2;
  }

  /* A SIGTERM between LOOP_CLR_FD and clearing autoclear again (berth's runner sends one on a
     timeout or a cancel, berth-spawner when berth dies) would leave a busy device to vanish at its
     last close: the catchable signals wait until the program is done (a few microseconds). */
  sigset_t hold;
  sigfillset(&hold);
  sigprocmask(SIG_BLOCK, &hold, NULL);

  int fd = open(device, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int error = errno;
    /* Gone, or being torn down (6.11+ refuses new openers then): the goal is reached. */
    if (error == ENOENT || error == ENXIO || error == ENODEV) {
      printf("not-attached\n");
      return 4;
    }
    fprintf(stderr, "berth-loop-detach: open %s: %s\n", device, strerror(error));
    return 2;
  }
  struct loop_info64 info;
  memset(&info, 0, sizeof info);
  if (ioctl(fd, LOOP_GET_STATUS64, &info) != 0) return failed_before(fd, errno, "LOOP_GET_STATUS64", device);
  dev_t backing = (dev_t)info.lo_device;
  if (major(backing) != want_major || minor(backing) != want_minor || info.lo_inode != want_inode || info.lo_offset != 0 || info.lo_sizelimit != 0) {
    printf("mismatch %u:%u %" PRIu64 " offset %" PRIu64 " sizelimit %" PRIu64 "\n", major(backing), minor(backing), (uint64_t)info.lo_inode,
           (uint64_t)info.lo_offset, (uint64_t)info.lo_sizelimit);
    close(fd);
    return 5;
  }
  if ((info.lo_flags & LO_FLAGS_AUTOCLEAR) != 0) {
    printf("autoclear-set\n");
    close(fd);
    return 8;
  }
  if (ioctl(fd, LOOP_SET_CAPACITY, 0) != 0) {
    int error = errno;
    if (error == EPERM || error == EACCES) {
      close(fd);
      printf("no-permission\n");
      return 7;
    }
    return failed_before(fd, error, "LOOP_SET_CAPACITY", device);
  }
  if (fsync(fd) != 0) {
    int error = errno;
    close(fd);
    printf("writeback-failed %d\n", error);
    return 10;
  }
  if (ioctl(fd, BLKFLSBUF, 0) != 0) {
    int error = errno;
    close(fd);
    if (error == EPERM || error == EACCES) {
      printf("no-permission\n");
      return 7;
    }
    printf("flush-failed %d\n", error);
    return 9;
  }
  if (ioctl(fd, LOOP_CLR_FD, 0) != 0) return failed_before(fd, errno, "LOOP_CLR_FD", device);
  int error = clear_autoclear(fd);
  /* In rundown, this close detaches the device. */
  close(fd);
  if (error == 0) {
    printf("busy\n");
    return 3;
  }
  if (error == ENXIO) {
    printf("detached\n");
    return 0;
  }
  printf("autoclear-left %d\n", error);
  return 6;
}
