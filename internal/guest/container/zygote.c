// The zygote: a process that libcontainer set up in a container exactly as
// it sets up an exec'd process (namespaces, cgroup, user, capabilities,
// seccomp, no_new_privs, environment, cwd) and that then waits for the
// agent's requests and forks each requested program from that state. See
// zygote.go for the protocol and for why it exists.
//
// It runs in this constructor, before the Go runtime starts, when the agent
// binary is executed as "<exe> cocoon-zygote <socket fd> <exe fd>"; it never
// returns then. Everything here runs with the container's privileges only:
// a container process that takes it over gains nothing it did not have.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define ZYGOTE_ARG "cocoon-zygote"
// Bounds match zygote.go's.
#define ZYGOTE_MAX_REQUEST (128 * 1024)
#define ZYGOTE_MAX_ARGS 4096
#define ZYGOTE_STDIO 3

static int zygote_fd(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < 3 || v > 1 << 20)
		return -1;
	return (int)v;
}

static int zygote_send(int sock, const char *buf, size_t len)
{
	ssize_t n;
	do {
		n = send(sock, buf, len, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	return n == (ssize_t)len ? 0 : -1;
}

// zygote_status tells the agent how a request ended: 0 once the program
// was executed, else the errno that stopped it.
static int zygote_status(int sock, int32_t err)
{
	char msg[1 + sizeof(err)] = {'s'};
	memcpy(msg + 1, &err, sizeof(err));
	return zygote_send(sock, msg, sizeof(msg));
}

// A request's program, for zygote_child: it shares the zygote's memory
// until it executes the program (CLONE_VM|CLONE_VFORK, as posix_spawn),
// which spares copying the zygote's page tables and then faulting its
// pages back in, each costly under TCG.
struct zygote_req {
	int sock;
	int fds[ZYGOTE_STDIO];
	char **argv;
	int err; // written by the child when it cannot execute the program
};

// zygote_child runs in the new process: stdio from the request, a message
// whose credentials tell the agent its pid, then the program.
static int zygote_child(void *arg)
{
	struct zygote_req *r = arg;
	for (int i = 0; i < ZYGOTE_STDIO; i++) {
		if (dup2(r->fds[i], i) < 0)
			goto fail;
	}
	if (zygote_send(r->sock, "p", 1) < 0)
		goto fail;
	execvp(r->argv[0], r->argv);
fail:
	r->err = errno;
	_exit(127);
}

// cocoon_zygote_parse splits a request of n bytes in buf, each argument
// ending in a NUL byte, into argv, which it ends with NULL; argv has room
// for ZYGOTE_MAX_ARGS + 1 pointers. It returns the number of arguments, or
// -1 for a request that is empty, does not end in a NUL byte or has more
// than ZYGOTE_MAX_ARGS arguments. (Not static: the tests call it, see
// zygote_parse.go.)
int cocoon_zygote_parse(char *buf, size_t n, char **argv)
{
	if (n == 0 || buf[n - 1] != '\0')
		return -1;
	int argc = 0;
	for (char *p = buf; p < buf + n; p += strlen(p) + 1) {
		if (argc == ZYGOTE_MAX_ARGS)
			return -1;
		argv[argc++] = p;
	}
	argv[argc] = NULL;
	return argc;
}

// zygote_serve answers requests until the agent closes its socket.
static void zygote_serve(int sock)
{
	static char buf[ZYGOTE_MAX_REQUEST + 1];
	static char *argv[ZYGOTE_MAX_ARGS + 1];
	static char zygote_stack[64 * 1024] __attribute__((aligned(16)));
	char control[CMSG_SPACE(sizeof(int) * ZYGOTE_STDIO)];

	if (zygote_send(sock, "r", 1) < 0)
		_exit(1);
	for (;;) {
		struct iovec iov = {.iov_base = buf, .iov_len = ZYGOTE_MAX_REQUEST};
		struct msghdr msg = {
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = control,
			.msg_controllen = sizeof(control),
		};
		ssize_t n;
		do {
			n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
		} while (n < 0 && errno == EINTR);
		if (n <= 0)
			_exit(0); // the agent is done with this zygote

		int fds[ZYGOTE_STDIO], nfds = 0;
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		if (c != NULL && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(fds))) {
			memcpy(fds, CMSG_DATA(c), sizeof(fds));
			nfds = ZYGOTE_STDIO;
		}
		// Only the agent writes here; a malformed request is its bug.
		if (nfds != ZYGOTE_STDIO || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
		    cocoon_zygote_parse(buf, (size_t)n, argv) < 0)
			_exit(2);

		struct zygote_req req = {.sock = sock, .argv = argv};
		memcpy(req.fds, fds, sizeof(fds));
		// CLONE_PARENT: the program is the agent's child, as it is when
		// libcontainer starts it, so the agent reaps it. The zygote
		// resumes once the child executed the program or exited.
		pid_t pid = clone(zygote_child, zygote_stack + sizeof(zygote_stack),
				  CLONE_VM | CLONE_VFORK | CLONE_PARENT | SIGCHLD, &req);
		int32_t err = pid < 0 ? errno : req.err;
		for (int i = 0; i < ZYGOTE_STDIO; i++)
			close(fds[i]);
		if (zygote_status(sock, err) < 0)
			_exit(0);
	}
}

__attribute__((constructor)) static void cocoon_zygote(int argc, char **argv, char **envp)
{
	(void)envp;
	if (argc != 4 || strcmp(argv[1], ZYGOTE_ARG) != 0)
		return;
	int sock = zygote_fd(argv[2]), exe = zygote_fd(argv[3]);
	if (sock < 0 || exe < 0 || sock == exe)
		_exit(1);
	// The executable was passed to be executed; the programs need neither
	// it nor the socket.
	close(exe);
	if (fcntl(sock, F_SETFD, FD_CLOEXEC) < 0)
		_exit(1);
	zygote_serve(sock);
}
