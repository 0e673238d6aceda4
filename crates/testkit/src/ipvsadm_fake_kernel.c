/*
 * A stand-in for the kernel's IPVS generic-netlink family, for testing Switchboard's ipvsadm
 * text against the real ipvsadm binary on machines without IPVS (CONFIG_IP_VS unset).
 *
 * Built by switchboard-testkit (ipvs::build_fake_kernel) into a shared object, loaded into ipvsadm with
 * LD_PRELOAD. ipvsadm talks to IPVS through libnl; this file overrides the few libnl entry points
 * ipvsadm's libipvs calls (genl_connect, genl_ctrl_resolve, nl_socket_modify_cb,
 * nl_socket_modify_err_cb, nl_send_auto_complete, nl_recvmsgs_default) and answers each request
 * from a small table kept in the text file named by $FAKE_IPVS_STATE, the way Linux 6.1's
 * ip_vs_ctl.c would: add/edit/delete services and real servers, flush, --set timeouts, and dump
 * services, real servers (with their connection counters), timeouts and info. Replies are built
 * with libnl's own message functions, so ipvsadm parses them with its own policies. Every
 * mutating request is also appended, decoded, to $FAKE_IPVS_LOG when that is set.
 *
 * Without $FAKE_IPVS_STATE every override defers to the real libnl function. With it, no request
 * reaches the kernel, and the info reply names a connection table of 4242 entries, by which the
 * test knows the stand-in answered before it lets ipvsadm change anything.
 *
 * State file, one entry a line (written back after every mutating request):
 *   S <af> <proto> <addr> <port> <fwmark> <sched> <flags-hex> <timeout> <netmask>
 *   D <af> <addr> <port> <fwd> <weight> <u_thresh> <l_thresh> <active> <inactive>
 *   T <tcp> <tcpfin> <udp>
 * D lines belong to the S line before them. <netmask> is dotted for AF_INET (the be32 mask the
 * kernel stores) and a prefix length for AF_INET6. <fwd> is IP_VS_CONN_F_{MASQ,LOCALNODE,TUNNEL,
 * DROUTE} = 0..3.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <linux/genetlink.h>
#include <linux/ip_vs.h>
#include <linux/netlink.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* libnl, declared here so that no libnl development headers are needed. */
struct nl_sock;
struct nl_msg;
typedef int (*msg_cb_t)(struct nl_msg *, void *);
typedef int (*err_cb_t)(struct sockaddr_nl *, struct nlmsgerr *, void *);
extern struct nl_msg *nlmsg_alloc(void);
extern void nlmsg_free(struct nl_msg *);
extern struct nlmsghdr *nlmsg_hdr(struct nl_msg *);
extern void *genlmsg_put(struct nl_msg *, uint32_t, uint32_t, int, int, int, uint8_t, uint8_t);
extern int nla_put(struct nl_msg *, int, int, const void *);
extern struct nlattr *nla_nest_start(struct nl_msg *, int);
extern int nla_nest_end(struct nl_msg *, struct nlattr *);
extern int nl_syserr2nlerr(int);

#define FAKE_FAMILY 0x4242
/* An unusual connection-table size, which tells the test that this stand-in answered. */
#define FAKE_CONN_TAB_SIZE 4242
#define MAX_SVC 256
#define MAX_DEST 256

struct dest {
	int af;
	unsigned char addr[16];
	unsigned port;
	unsigned fwd, weight, uth, lth, active, inactive;
};

struct svc {
	int af;
	unsigned proto;
	unsigned char addr[16];
	unsigned port;
	unsigned fwmark;
	char sched[IP_VS_SCHEDNAME_MAXLEN + 1];
	unsigned flags, timeout, netmask;
	int ndest;
	struct dest *dests;
};

static struct svc svcs[MAX_SVC];
static int nsvc;
static unsigned tmo[3] = {900, 120, 300};

static msg_cb_t valid_cb;
static void *valid_arg;
static err_cb_t err_cb;
static void *err_arg;
static unsigned char request[65536];
static int have_request;

static const char *state_path(void) { return getenv("FAKE_IPVS_STATE"); }

static void *real(const char *name)
{
	void *f = dlsym(RTLD_NEXT, name);
	if (!f) {
		fprintf(stderr, "fake ipvs: no real %s\n", name);
		exit(99);
	}
	return f;
}

/* ---- state file ---- */

static void fmt_addr(int af, const unsigned char *a, char *out)
{
	inet_ntop(af, a, out, INET6_ADDRSTRLEN);
}

static void load(void)
{
	FILE *f = fopen(state_path(), "r");
	char line[512];
	nsvc = 0;
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		char addr[64], sched[64], mask[64];
		if (line[0] == 'S' && nsvc < MAX_SVC) {
			struct svc *s = &svcs[nsvc];
			memset(s, 0, sizeof *s);
			if (sscanf(line, "S %d %u %63s %u %u %63s %x %u %63s", &s->af, &s->proto, addr,
				   &s->port, &s->fwmark, sched, &s->flags, &s->timeout, mask) != 9)
				goto bad;
			inet_pton(s->af, addr, s->addr);
			snprintf(s->sched, sizeof s->sched, "%.16s", sched);
			if (s->af == AF_INET)
				inet_pton(AF_INET, mask, &s->netmask);
			else
				s->netmask = (unsigned)atoi(mask);
			s->dests = calloc(MAX_DEST, sizeof(struct dest));
			nsvc++;
		} else if (line[0] == 'D' && nsvc > 0) {
			struct svc *s = &svcs[nsvc - 1];
			struct dest *d = &s->dests[s->ndest];
			if (s->ndest >= MAX_DEST)
				goto bad;
			if (sscanf(line, "D %d %63s %u %u %u %u %u %u %u", &d->af, addr, &d->port, &d->fwd,
				   &d->weight, &d->uth, &d->lth, &d->active, &d->inactive) != 9)
				goto bad;
			inet_pton(d->af, addr, d->addr);
			s->ndest++;
		} else if (line[0] == 'T') {
			if (sscanf(line, "T %u %u %u", &tmo[0], &tmo[1], &tmo[2]) != 3)
				goto bad;
		} else if (line[0] != '\n' && line[0] != '#') {
			goto bad;
		}
	}
	fclose(f);
	return;
bad:
	fprintf(stderr, "fake ipvs: bad state line: %s", line);
	exit(98);
}

static void save(void)
{
	FILE *f = fopen(state_path(), "w");
	char a[INET6_ADDRSTRLEN], m[INET6_ADDRSTRLEN];
	if (!f) {
		perror("fake ipvs: state");
		exit(97);
	}
	for (int i = 0; i < nsvc; i++) {
		struct svc *s = &svcs[i];
		fmt_addr(s->af, s->addr, a);
		if (s->af == AF_INET)
			inet_ntop(AF_INET, &s->netmask, m, sizeof m);
		else
			snprintf(m, sizeof m, "%u", s->netmask);
		fprintf(f, "S %d %u %s %u %u %s %x %u %s\n", s->af, s->proto, a, s->port, s->fwmark,
			s->sched, s->flags, s->timeout, m);
		for (int j = 0; j < s->ndest; j++) {
			struct dest *d = &s->dests[j];
			fmt_addr(d->af, d->addr, a);
			fprintf(f, "D %d %s %u %u %u %u %u %u %u\n", d->af, a, d->port, d->fwd, d->weight,
				d->uth, d->lth, d->active, d->inactive);
		}
	}
	fprintf(f, "T %u %u %u\n", tmo[0], tmo[1], tmo[2]);
	fclose(f);
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	const char *p = getenv("FAKE_IPVS_LOG");
	FILE *f;
	va_list ap;
	if (!p || !(f = fopen(p, "a")))
		return;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fclose(f);
}

/* ---- request attributes ---- */

#define ADATA(a) ((unsigned char *)(a) + NLA_HDRLEN)
#define ALEN(a) ((int)(a)->nla_len - NLA_HDRLEN)

static void parse(struct nlattr **tb, int max, unsigned char *data, int len)
{
	memset(tb, 0, sizeof(*tb) * (max + 1));
	while (len >= NLA_HDRLEN) {
		struct nlattr *a = (struct nlattr *)data;
		int t = a->nla_type & NLA_TYPE_MASK;
		if (a->nla_len < NLA_HDRLEN || a->nla_len > len)
			break;
		if (t <= max)
			tb[t] = a;
		len -= NLA_ALIGN(a->nla_len);
		data += NLA_ALIGN(a->nla_len);
	}
}

static unsigned get_u16(struct nlattr *a) { uint16_t v = 0; if (a) memcpy(&v, ADATA(a), 2); return v; }
static unsigned get_u32(struct nlattr *a) { uint32_t v = 0; if (a) memcpy(&v, ADATA(a), 4); return v; }

static int svc_from(struct nlattr *nest, struct svc *s)
{
	struct nlattr *tb[IPVS_SVC_ATTR_MAX + 1];
	memset(s, 0, sizeof *s);
	if (!nest)
		return -EINVAL;
	parse(tb, IPVS_SVC_ATTR_MAX, ADATA(nest), ALEN(nest));
	if (!tb[IPVS_SVC_ATTR_AF])
		return -EINVAL;
	s->af = (int)get_u16(tb[IPVS_SVC_ATTR_AF]);
	if (tb[IPVS_SVC_ATTR_FWMARK]) {
		s->fwmark = get_u32(tb[IPVS_SVC_ATTR_FWMARK]);
		s->proto = IPPROTO_TCP;
	} else {
		if (!tb[IPVS_SVC_ATTR_PROTOCOL] || !tb[IPVS_SVC_ATTR_ADDR] || !tb[IPVS_SVC_ATTR_PORT])
			return -EINVAL;
		s->proto = get_u16(tb[IPVS_SVC_ATTR_PROTOCOL]);
		memcpy(s->addr, ADATA(tb[IPVS_SVC_ATTR_ADDR]),
		       ALEN(tb[IPVS_SVC_ATTR_ADDR]) > 16 ? 16 : ALEN(tb[IPVS_SVC_ATTR_ADDR]));
		s->port = ntohs((uint16_t)get_u16(tb[IPVS_SVC_ATTR_PORT]));
	}
	if (tb[IPVS_SVC_ATTR_SCHED_NAME])
		snprintf(s->sched, sizeof s->sched, "%.*s", ALEN(tb[IPVS_SVC_ATTR_SCHED_NAME]),
			 (char *)ADATA(tb[IPVS_SVC_ATTR_SCHED_NAME]));
	if (tb[IPVS_SVC_ATTR_FLAGS]) {
		struct ip_vs_flags fl;
		memcpy(&fl, ADATA(tb[IPVS_SVC_ATTR_FLAGS]), sizeof fl);
		s->flags = fl.flags & fl.mask;
	}
	s->timeout = get_u32(tb[IPVS_SVC_ATTR_TIMEOUT]);
	s->netmask = get_u32(tb[IPVS_SVC_ATTR_NETMASK]);
	if (tb[IPVS_SVC_ATTR_PE_NAME])
		return -EOPNOTSUPP;
	return 0;
}

static int dest_from(struct nlattr *nest, const struct svc *s, struct dest *d)
{
	struct nlattr *tb[IPVS_DEST_ATTR_MAX + 1];
	memset(d, 0, sizeof *d);
	if (!nest)
		return -EINVAL;
	parse(tb, IPVS_DEST_ATTR_MAX, ADATA(nest), ALEN(nest));
	if (!tb[IPVS_DEST_ATTR_ADDR] || !tb[IPVS_DEST_ATTR_PORT])
		return -EINVAL;
	d->af = tb[IPVS_DEST_ATTR_ADDR_FAMILY] ? (int)get_u16(tb[IPVS_DEST_ATTR_ADDR_FAMILY]) : s->af;
	memcpy(d->addr, ADATA(tb[IPVS_DEST_ATTR_ADDR]),
	       ALEN(tb[IPVS_DEST_ATTR_ADDR]) > 16 ? 16 : ALEN(tb[IPVS_DEST_ATTR_ADDR]));
	d->port = ntohs((uint16_t)get_u16(tb[IPVS_DEST_ATTR_PORT]));
	d->fwd = get_u32(tb[IPVS_DEST_ATTR_FWD_METHOD]) & IP_VS_CONN_F_FWD_MASK;
	d->weight = get_u32(tb[IPVS_DEST_ATTR_WEIGHT]);
	d->uth = get_u32(tb[IPVS_DEST_ATTR_U_THRESH]);
	d->lth = get_u32(tb[IPVS_DEST_ATTR_L_THRESH]);
	if ((int)d->weight < 0 || (d->uth && d->uth < d->lth))
		return -ERANGE;
	/* Only IPIP tunnels, as Switchboard writes: anything else is refused. */
	if (tb[IPVS_DEST_ATTR_TUN_TYPE] && *ADATA(tb[IPVS_DEST_ATTR_TUN_TYPE]) != 0)
		return -EOPNOTSUPP;
	if (d->af != s->af && d->fwd != IP_VS_CONN_F_TUNNEL)
		return -EINVAL;
	return 0;
}

static int svc_key_eq(const struct svc *a, const struct svc *b)
{
	if (a->af != b->af || a->fwmark != b->fwmark)
		return 0;
	if (a->fwmark)
		return 1;
	return a->proto == b->proto && a->port == b->port &&
	       !memcmp(a->addr, b->addr, a->af == AF_INET ? 4 : 16);
}

static struct svc *find_svc(const struct svc *k)
{
	for (int i = 0; i < nsvc; i++)
		if (svc_key_eq(&svcs[i], k))
			return &svcs[i];
	return NULL;
}

static int find_dest(const struct svc *s, const struct dest *k)
{
	for (int i = 0; i < s->ndest; i++) {
		const struct dest *d = &s->dests[i];
		if (d->af == k->af && d->port == k->port &&
		    !memcmp(d->addr, k->addr, d->af == AF_INET ? 4 : 16))
			return i;
	}
	return -1;
}

static int known_sched(const char *n)
{
	static const char *names[] = {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh",
				      "sed", "nq", "fo", "ovf", "mh", "twos", NULL};
	for (int i = 0; names[i]; i++)
		if (!strcmp(n, names[i]))
			return 1;
	return 0;
}

static void log_svc(const char *what, const struct svc *s)
{
	char a[INET6_ADDRSTRLEN], m[INET6_ADDRSTRLEN];
	fmt_addr(s->af, s->addr, a);
	if (s->af == AF_INET)
		inet_ntop(AF_INET, &s->netmask, m, sizeof m);
	else
		snprintf(m, sizeof m, "%u", s->netmask);
	logf_("%s af=%d proto=%u addr=%s port=%u fwmark=%u sched=%s flags=0x%x timeout=%u netmask=%s",
	      what, s->af, s->proto, a, s->port, s->fwmark, s->sched, s->flags, s->timeout, m);
}

static void log_dest(const struct dest *d)
{
	char a[INET6_ADDRSTRLEN];
	fmt_addr(d->af, d->addr, a);
	logf_(" | dest af=%d addr=%s port=%u fwd=%u weight=%u", d->af, a, d->port, d->fwd, d->weight);
}

/* ---- replies ---- */

static void put_u16(struct nl_msg *m, int t, unsigned v) { uint16_t x = (uint16_t)v; nla_put(m, t, 2, &x); }
static void put_u32(struct nl_msg *m, int t, unsigned v) { uint32_t x = v; nla_put(m, t, 4, &x); }
static void put_u64(struct nl_msg *m, int t, uint64_t v) { nla_put(m, t, 8, &v); }

static void put_stats(struct nl_msg *m, int t, int wide)
{
	struct nlattr *n = nla_nest_start(m, t);
	for (int a = IPVS_STATS_ATTR_CONNS; a <= IPVS_STATS_ATTR_OUTBPS; a++) {
		if (wide || a == IPVS_STATS_ATTR_INBYTES || a == IPVS_STATS_ATTR_OUTBYTES)
			put_u64(m, a, 0);
		else
			put_u32(m, a, 0);
	}
	nla_nest_end(m, n);
}

static struct nl_msg *reply(int cmd)
{
	struct nl_msg *m = nlmsg_alloc();
	genlmsg_put(m, 0, 0, FAKE_FAMILY, 0, 0, (uint8_t)cmd, IPVS_GENL_VERSION);
	return m;
}

static int deliver(struct nl_msg *m)
{
	int r = valid_cb ? valid_cb(m, valid_arg) : 0;
	nlmsg_free(m);
	return r;
}

static void put_svc(struct nl_msg *m, const struct svc *s)
{
	struct nlattr *n = nla_nest_start(m, IPVS_CMD_ATTR_SERVICE);
	struct ip_vs_flags fl = {.flags = s->flags, .mask = ~0U};
	put_u16(m, IPVS_SVC_ATTR_AF, (unsigned)s->af);
	if (s->fwmark) {
		put_u32(m, IPVS_SVC_ATTR_FWMARK, s->fwmark);
	} else {
		put_u16(m, IPVS_SVC_ATTR_PROTOCOL, s->proto);
		nla_put(m, IPVS_SVC_ATTR_ADDR, 16, s->addr);
		put_u16(m, IPVS_SVC_ATTR_PORT, htons((uint16_t)s->port));
	}
	nla_put(m, IPVS_SVC_ATTR_SCHED_NAME, (int)strlen(s->sched) + 1, s->sched);
	nla_put(m, IPVS_SVC_ATTR_FLAGS, sizeof fl, &fl);
	put_u32(m, IPVS_SVC_ATTR_TIMEOUT, s->timeout);
	put_u32(m, IPVS_SVC_ATTR_NETMASK, s->netmask);
	put_stats(m, IPVS_SVC_ATTR_STATS, 0);
	put_stats(m, IPVS_SVC_ATTR_STATS64, 1);
	nla_nest_end(m, n);
}

static void put_dest(struct nl_msg *m, const struct dest *d)
{
	struct nlattr *n = nla_nest_start(m, IPVS_CMD_ATTR_DEST);
	uint8_t zero8 = 0;
	nla_put(m, IPVS_DEST_ATTR_ADDR, 16, d->addr);
	put_u16(m, IPVS_DEST_ATTR_PORT, htons((uint16_t)d->port));
	put_u32(m, IPVS_DEST_ATTR_FWD_METHOD, d->fwd);
	put_u32(m, IPVS_DEST_ATTR_WEIGHT, d->weight);
	nla_put(m, IPVS_DEST_ATTR_TUN_TYPE, 1, &zero8);
	put_u16(m, IPVS_DEST_ATTR_TUN_PORT, 0);
	put_u16(m, IPVS_DEST_ATTR_TUN_FLAGS, 0);
	put_u32(m, IPVS_DEST_ATTR_U_THRESH, d->uth);
	put_u32(m, IPVS_DEST_ATTR_L_THRESH, d->lth);
	put_u32(m, IPVS_DEST_ATTR_ACTIVE_CONNS, d->active);
	put_u32(m, IPVS_DEST_ATTR_INACT_CONNS, d->inactive);
	put_u32(m, IPVS_DEST_ATTR_PERSIST_CONNS, 0);
	put_u16(m, IPVS_DEST_ATTR_ADDR_FAMILY, (unsigned)d->af);
	put_stats(m, IPVS_DEST_ATTR_STATS, 0);
	put_stats(m, IPVS_DEST_ATTR_STATS64, 1);
	nla_nest_end(m, n);
}

/* ---- the "kernel" ---- */

static int handle(void)
{
	struct nlmsghdr *nlh = (struct nlmsghdr *)request;
	struct genlmsghdr *g = (struct genlmsghdr *)(request + NLMSG_HDRLEN);
	unsigned char *attrs = (unsigned char *)g + GENL_HDRLEN;
	int alen = (int)nlh->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN;
	struct nlattr *tb[IPVS_CMD_ATTR_MAX + 1];
	struct svc k, *s;
	struct dest d;
	int r, i;

	parse(tb, IPVS_CMD_ATTR_MAX, attrs, alen);
	load();
	switch (g->cmd) {
	case IPVS_CMD_GET_INFO: {
		struct nl_msg *m = reply(IPVS_CMD_SET_INFO);
		put_u32(m, IPVS_INFO_ATTR_VERSION, IP_VS_VERSION_CODE);
		put_u32(m, IPVS_INFO_ATTR_CONN_TAB_SIZE, FAKE_CONN_TAB_SIZE);
		deliver(m);
		return 0;
	}
	case IPVS_CMD_GET_CONFIG: {
		struct nl_msg *m = reply(IPVS_CMD_SET_CONFIG);
		put_u32(m, IPVS_CMD_ATTR_TIMEOUT_TCP, tmo[0]);
		put_u32(m, IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, tmo[1]);
		put_u32(m, IPVS_CMD_ATTR_TIMEOUT_UDP, tmo[2]);
		deliver(m);
		return 0;
	}
	case IPVS_CMD_GET_DAEMON:
	case IPVS_CMD_ZERO:
		return 0;
	case IPVS_CMD_GET_SERVICE:
		if (!(nlh->nlmsg_flags & NLM_F_DUMP)) {
			if ((r = svc_from(tb[IPVS_CMD_ATTR_SERVICE], &k)))
				return r;
			if (!(s = find_svc(&k)))
				return -ESRCH;
			struct nl_msg *m = reply(IPVS_CMD_NEW_SERVICE);
			put_svc(m, s);
			deliver(m);
			return 0;
		}
		for (i = 0; i < nsvc; i++) {
			struct nl_msg *m = reply(IPVS_CMD_NEW_SERVICE);
			put_svc(m, &svcs[i]);
			deliver(m);
		}
		return 0;
	case IPVS_CMD_GET_DEST:
		if ((r = svc_from(tb[IPVS_CMD_ATTR_SERVICE], &k)))
			return r;
		if (!(s = find_svc(&k)))
			return -ESRCH;
		for (i = 0; i < s->ndest; i++) {
			struct nl_msg *m = reply(IPVS_CMD_NEW_DEST);
			put_dest(m, &s->dests[i]);
			deliver(m);
		}
		return 0;
	case IPVS_CMD_SET_CONFIG:
		for (i = 0; i < 3; i++) {
			unsigned v = get_u32(tb[IPVS_CMD_ATTR_TIMEOUT_TCP + i]);
			if (v)
				tmo[i] = v; /* 0 = leave unchanged */
		}
		logf_("SET_CONFIG tcp=%u tcpfin=%u udp=%u\n", get_u32(tb[IPVS_CMD_ATTR_TIMEOUT_TCP]),
		      get_u32(tb[IPVS_CMD_ATTR_TIMEOUT_TCP_FIN]), get_u32(tb[IPVS_CMD_ATTR_TIMEOUT_UDP]));
		save();
		return 0;
	case IPVS_CMD_FLUSH:
		nsvc = 0;
		logf_("FLUSH\n");
		save();
		return 0;
	case IPVS_CMD_NEW_SERVICE:
	case IPVS_CMD_SET_SERVICE:
	case IPVS_CMD_DEL_SERVICE:
		if ((r = svc_from(tb[IPVS_CMD_ATTR_SERVICE], &k)))
			return r;
		s = find_svc(&k);
		log_svc(g->cmd == IPVS_CMD_NEW_SERVICE ? "NEW_SERVICE"
			: g->cmd == IPVS_CMD_SET_SERVICE ? "SET_SERVICE" : "DEL_SERVICE", &k);
		logf_("\n");
		if (g->cmd == IPVS_CMD_NEW_SERVICE) {
			if (s)
				return -EEXIST;
			if (!known_sched(k.sched))
				return -ENOENT;
			if (nsvc >= MAX_SVC)
				return -ENOMEM;
			k.dests = calloc(MAX_DEST, sizeof(struct dest));
			svcs[nsvc++] = k;
		} else if (!s) {
			return -ESRCH;
		} else if (g->cmd == IPVS_CMD_SET_SERVICE) {
			if (!known_sched(k.sched))
				return -ENOENT;
			k.dests = s->dests;
			k.ndest = s->ndest;
			*s = k;
		} else {
			memmove(s, s + 1, (size_t)(&svcs[nsvc] - (s + 1)) * sizeof *s);
			nsvc--;
		}
		save();
		return 0;
	case IPVS_CMD_NEW_DEST:
	case IPVS_CMD_SET_DEST:
	case IPVS_CMD_DEL_DEST:
		if ((r = svc_from(tb[IPVS_CMD_ATTR_SERVICE], &k)))
			return r;
		if (!(s = find_svc(&k)))
			return -ESRCH;
		if ((r = dest_from(tb[IPVS_CMD_ATTR_DEST], s, &d)))
			return r;
		log_svc(g->cmd == IPVS_CMD_NEW_DEST ? "NEW_DEST"
			: g->cmd == IPVS_CMD_SET_DEST ? "SET_DEST" : "DEL_DEST", &k);
		log_dest(&d);
		logf_("\n");
		i = find_dest(s, &d);
		if (g->cmd == IPVS_CMD_NEW_DEST) {
			if (i >= 0)
				return -EEXIST;
			if (s->ndest >= MAX_DEST)
				return -ENOMEM;
			s->dests[s->ndest++] = d;
		} else if (i < 0) {
			return -ENOENT;
		} else if (g->cmd == IPVS_CMD_SET_DEST) {
			d.active = s->dests[i].active;
			d.inactive = s->dests[i].inactive;
			s->dests[i] = d;
		} else {
			memmove(&s->dests[i], &s->dests[i + 1],
				(size_t)(s->ndest - i - 1) * sizeof(struct dest));
			s->ndest--;
		}
		save();
		return 0;
	default:
		return -EOPNOTSUPP;
	}
}

/* ---- the libnl overrides ---- */

int genl_connect(struct nl_sock *sk)
{
	if (!state_path())
		return ((int (*)(struct nl_sock *))real("genl_connect"))(sk);
	return 0;
}

int genl_ctrl_resolve(struct nl_sock *sk, const char *name)
{
	if (!state_path())
		return ((int (*)(struct nl_sock *, const char *))real("genl_ctrl_resolve"))(sk, name);
	return strcmp(name, IPVS_GENL_NAME) ? -nl_syserr2nlerr(ENOENT) : FAKE_FAMILY;
}

int nl_socket_modify_cb(struct nl_sock *sk, int type, int kind, msg_cb_t func, void *arg)
{
	if (!state_path())
		return ((int (*)(struct nl_sock *, int, int, msg_cb_t, void *))real(
			"nl_socket_modify_cb"))(sk, type, kind, func, arg);
	if (type == 0 /* NL_CB_VALID */) {
		valid_cb = func;
		valid_arg = arg;
	}
	return 0;
}

int nl_socket_modify_err_cb(struct nl_sock *sk, int kind, err_cb_t func, void *arg)
{
	if (!state_path())
		return ((int (*)(struct nl_sock *, int, err_cb_t, void *))real(
			"nl_socket_modify_err_cb"))(sk, kind, func, arg);
	err_cb = func;
	err_arg = arg;
	return 0;
}

int nl_send_auto_complete(struct nl_sock *sk, struct nl_msg *msg)
{
	struct nlmsghdr *h;
	if (!state_path())
		return ((int (*)(struct nl_sock *, struct nl_msg *))real("nl_send_auto_complete"))(sk,
												  msg);
	h = nlmsg_hdr(msg);
	if (h->nlmsg_len > sizeof request)
		return -nl_syserr2nlerr(EMSGSIZE);
	memcpy(request, h, h->nlmsg_len);
	have_request = 1;
	return (int)h->nlmsg_len;
}

int nl_recvmsgs_default(struct nl_sock *sk)
{
	int r;
	if (!state_path())
		return ((int (*)(struct nl_sock *))real("nl_recvmsgs_default"))(sk);
	if (!have_request)
		return -nl_syserr2nlerr(EINVAL);
	have_request = 0;
	r = handle();
	valid_cb = NULL;
	if (r < 0) {
		struct nlmsgerr e;
		memset(&e, 0, sizeof e);
		e.error = r;
		memcpy(&e.msg, request, sizeof e.msg);
		if (err_cb)
			err_cb(NULL, &e, err_arg);
		err_cb = NULL;
		return -nl_syserr2nlerr(-r);
	}
	err_cb = NULL;
	return 0;
}
