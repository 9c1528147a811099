/*
 * The fake tools of berth's simulated host (iscsiadm, multipath, multipathd, blockdev, tee):
 * one small binary copied to <root>/bin/<tool>. It sends its name, argv (and, for tee, stdin)
 * to the simulated kernel daemon at <root>/run/simhost/kernel.sock, prints what the daemon
 * answers and exits with its code, so that a tool call costs about what a real one does
 * (a Node start per call cost 100-250 ms). The protocol is in ../tool-wire.ts.
 *
 * Request:  "BTOOL1\n", u32 count, then count x (u32 length, bytes): tool, argv[1..];
 *           then u32 length + the bytes read from stdin (tee only; 0 otherwise).
 * Response: i32 exit code, u32 length + stdout bytes, u32 length + stderr bytes.
 * Integers are little-endian.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAGIC "BTOOL1\n"

struct buf {
	char *data;
	size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *next = realloc(b->data, cap);
		if (!next) {
			fputs("simhost tool: out of memory\n", stderr);
			exit(1);
		}
		b->data = next;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
	unsigned char le[4] = { v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >> 24) & 0xff };
	put(b, le, 4);
}

static void put_str(struct buf *b, const char *s, size_t n)
{
	put_u32(b, (uint32_t)n);
	put(b, s, n);
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int read_all(int fd, char *p, size_t n)
{
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* What each tool says when the kernel daemon (iscsid, multipathd) cannot be reached. */
static int offline(const char *tool)
{
	if (strcmp(tool, "iscsiadm") == 0) {
		fputs("iscsiadm: can not connect to iSCSI daemon (111)!\n", stderr);
		return 20;
	}
	if (strcmp(tool, "multipathd") == 0)
		return 1; /* uxclnt: no socket, exit 1 without a word */
	fprintf(stderr, "%s: the simulated host is not running\n", tool);
	return 1;
}

int main(int argc, char **argv)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0) {
		fputs("simhost tool: cannot read /proc/self/exe\n", stderr);
		return 1;
	}
	exe[n] = '\0';
	/* <root>/bin/<tool>: the tool is the file's name, the socket is under its root. */
	char *slash = strrchr(exe, '/');
	if (!slash)
		return 1;
	const char *tool = slash + 1;
	*slash = '\0';
	char *bin = strrchr(exe, '/');
	if (!bin)
		return 1;
	*bin = '\0';
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if ((size_t)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/run/simhost/kernel.sock", exe) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "%s: the simulated root %s is too long for a socket path\n", tool, exe);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	struct buf req = { 0 };
	put(&req, MAGIC, strlen(MAGIC));
	put_u32(&req, (uint32_t)argc);
	put_str(&req, tool, strlen(tool));
	for (int i = 1; i < argc; i++)
		put_str(&req, argv[i], strlen(argv[i]));
	struct buf in = { 0 };
	if (strcmp(tool, "tee") == 0) {
		char chunk[65536];
		for (;;) {
			ssize_t r = read(STDIN_FILENO, chunk, sizeof(chunk));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				break;
			put(&in, chunk, (size_t)r);
		}
	}
	put_str(&req, in.data ? in.data : "", in.len);

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return offline(tool);
	if (write_all(fd, req.data, req.len) < 0)
		return offline(tool);

	unsigned char head[8];
	if (read_all(fd, (char *)head, 8) < 0)
		return offline(tool);
	int code = (int32_t)get_u32(head);
	uint32_t out_len = get_u32(head + 4);
	char *out = malloc(out_len + 1);
	if (!out || read_all(fd, out, out_len) < 0)
		return offline(tool);
	unsigned char elen[4];
	if (read_all(fd, (char *)elen, 4) < 0)
		return offline(tool);
	uint32_t err_len = get_u32(elen);
	char *err = malloc(err_len + 1);
	if (!err || read_all(fd, err, err_len) < 0)
		return offline(tool);
	close(fd);
	write_all(STDOUT_FILENO, out, out_len);
	write_all(STDERR_FILENO, err, err_len);
	return code;
}
