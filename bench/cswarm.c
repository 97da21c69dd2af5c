/* bench/cswarm.c: a load-client process in C for the relay and fan-out workloads of
 * Streampod's bench (bench/swarm.py's protocol, the Streampod dialect only).
 *
 * Why: the load clients share this machine's two cores with the servers they measure. The
 * Python client (bench/rawws.py) costs 40 to 50 us of CPU per relayed message (a send and a
 * receive, JSON both ways); this one costs a few, so a server gets the cores the Python
 * clients took (bench/workers.py, --client c). Built by bench/cswarm.py with the machine's C
 * compiler; run by the coordinator as a bench.swarm process is.
 *
 * The coordinator talks to it over stdin/stdout, one JSON object a line, as to bench.swarm:
 * "open" (conns [[base, uid], ...]: each connects, upgrades and waits for BenchReady),
 * "track" (mode "relay" or fan-out), "send" (open loop, each message stamped with its
 * scheduled time), "count", "stats", "rss" and "close". Requests are parsed for the keys
 * those commands carry, not as general JSON: only bench.swarm's coordinator talks to it.
 *
 * WebSocket (RFC 6455, client side): the upgrade (status 101 checked; Sec-WebSocket-Accept
 * is not: the server is ours, on loopback), masked text frames (one mask key per
 * connection, as bench/rawws.py, which says why), the server's frames of any length,
 * fragmented messages joined, pings answered with pongs, the close handshake either way.
 * Back-pressure: when the next message's sender has more than 64 KiB unsent, sending waits
 * (every sender: messages go in their scheduled order, as bench.swarm's awaited sends do),
 * and the wait counts in those messages' latency (each is stamped with its schedule). Times are CLOCK_MONOTONIC seconds: Python's
 * time.perf_counter() on Linux, so the coordinator's and bench.swarm's stamps compare.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAD "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" /* bench.protocol.PAD: 32 x */
#define HIGH_WATER 65536
#define MAX_MESSAGE (1 << 22)

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

enum { CONNECTING, UPGRADING, WAITING_READY, OPEN, CLOSING, CLOSED, FAILED };

typedef struct {
    int fd, uid, state, writable_wanted;
    char host[64];
    int port;
    buf_t in, out, frag;
    int frag_op;
    unsigned char mask[4];
    int seq;      /* the next seq this connection sends */
    long last;    /* fan-out: the last seq received */
} conn_t;

static conn_t **conns; /* each allocated once: epoll holds pointers to them */
static int n_conns, opening, opened_now, failed_now, open_pending, blocked;
static int n_opened; /* connections that got their BenchReady: bench.swarm's len(conns) */
static int epfd;
static char first_error[160];

/* tracking */
static int relay_mode, tracking;
static double *lat, *sched;
static size_t n_lat, cap_lat;
static double last_in;
static long dups, errors, closed_count;
static int *counts;
static size_t cap_counts;
static uint64_t *seen;
static size_t cap_seen, n_seen;
static int seen_bits; /* cap_seen == 1 << seen_bits */
static struct rusage ru0;

/* sending */
static int sending, senders, src0, n_targets;
static int *targets;
static long k_sent, total;
static double rate, start_at, late_max;
static uint64_t rng;

static int closing_all;
static double close_deadline;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void buf_add(buf_t *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) die("realloc");
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_drop(buf_t *b, size_t n) {
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static uint64_t next_random(void) { /* xorshift64* */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ULL;
}

/* -- sockets ------------------------------------------------------------------------- */

static void watch(conn_t *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->writable_wanted = out;
}

static void finish(conn_t *c, int state) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    int was = c->state;
    c->state = state;
    if (was == CONNECTING || was == UPGRADING || was == WAITING_READY) {
        opening--;
        failed_now++;
    } else if (was == OPEN) { /* ended without a close frame */
        closed_count++;
    }
}

static void flush(conn_t *c) {
    while (c->out.len) {
        ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            if (errno == EINTR) continue;
            finish(c, c->state == CLOSING ? CLOSED : FAILED);
            return;
        }
        buf_drop(&c->out, n);
    }
    if ((c->out.len > 0) != c->writable_wanted) watch(c, c->out.len > 0);
}

static void send_frame(conn_t *c, int opcode, const char *payload, size_t n) {
    unsigned char head[14];
    size_t h = 0;
    head[h++] = 0x80 | opcode;
    if (n < 126) {
        head[h++] = 0x80 | n;
    } else if (n < 65536) {
        head[h++] = 0x80 | 126;
        head[h++] = n >> 8;
        head[h++] = n & 0xff;
    } else {
        head[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) head[h++] = (n >> (8 * i)) & 0xff;
    }
    memcpy(head + h, c->mask, 4);
    h += 4;
    buf_add(&c->out, head, h);
    size_t at = c->out.len;
    buf_add(&c->out, payload, n);
    for (size_t i = 0; i < n; i++) c->out.p[at + i] ^= c->mask[i & 3];
    flush(c);
}

/* -- what arrives -------------------------------------------------------------------- */

static size_t slot_of(uint64_t key) { /* the product's high bits: every bit of key counts */
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> (64 - seen_bits));
}

static int seen_add(uint64_t key) { /* 1 if new */
    key += 1; /* 0 marks a free slot */
    if ((n_seen + 1) * 2 > cap_seen) {
        size_t old_cap = cap_seen;
        uint64_t *old = seen;
        seen_bits = seen_bits ? seen_bits + 1 : 16;
        cap_seen = (size_t)1 << seen_bits;
        seen = calloc(cap_seen, sizeof *seen);
        if (!seen) die("calloc");
        for (size_t i = 0; i < old_cap; i++)
            if (old[i]) {
                size_t j = slot_of(old[i]);
                while (seen[j]) j = (j + 1) & (cap_seen - 1);
                seen[j] = old[i];
            }
        free(old);
    }
    size_t j = slot_of(key);
    while (seen[j]) {
        if (seen[j] == key) return 0;
        j = (j + 1) & (cap_seen - 1);
    }
    seen[j] = key;
    n_seen++;
    return 1;
}

static void record(double sent_at, double t) {
    if (n_lat == cap_lat) {
        cap_lat = cap_lat ? cap_lat * 2 : 65536;
        lat = realloc(lat, cap_lat * sizeof *lat);
        sched = realloc(sched, cap_lat * sizeof *sched);
        if (!lat || !sched) die("realloc");
    }
    lat[n_lat] = t - sent_at;
    sched[n_lat++] = sent_at;
}

static const char *field(const char *text, const char *key) {
    const char *p = strstr(text, key);
    if (!p) return NULL;
    p += strlen(key);
    while (*p == ' ') p++;
    return p;
}

static void on_text(conn_t *c, char *text) { /* NUL-terminated */
    double t = now();
    if (c->state == WAITING_READY) {
        if (strstr(text, "\"BenchReady\"")) {
            c->state = OPEN;
            opening--;
            opened_now++;
            n_opened++;
        } else if (strstr(text, "\"command\":\"error\"") || strstr(text, "\"command\": \"error\"")) {
            snprintf(first_error, sizeof first_error, "refused: %.100s", text);
            finish(c, FAILED);
        }
        return;
    }
    if (!strstr(text, "\"BenchRelay\"")) {
        if (strstr(text, "\"error\"")) errors++;
        return;
    }
    if (!tracking) return;
    const char *src_p = field(text, "\"src\":"), *seq_p = field(text, "\"seq\":"),
               *t_p = field(text, "\"t\":");
    if (!src_p || !seq_p || !t_p) {
        errors++;
        return;
    }
    long src = strtol(src_p, NULL, 10), seq = strtol(seq_p, NULL, 10);
    double sent_at = strtod(t_p, NULL);
    if (relay_mode) {
        if (!seen_add(((uint64_t)(uint32_t)src << 32) | (uint32_t)seq)) {
            dups++;
            return;
        }
        record(sent_at, t);
        last_in = t;
        return;
    }
    if (c->last >= seq) {
        dups++;
        return;
    }
    c->last = seq;
    record(sent_at, t);
    if (seq < 0) return;
    if ((size_t)seq >= cap_counts) {
        size_t cap = cap_counts ? cap_counts : 1024;
        while (cap <= (size_t)seq) cap *= 2;
        counts = realloc(counts, cap * sizeof *counts);
        if (!counts) die("realloc");
        memset(counts + cap_counts, 0, (cap - cap_counts) * sizeof *counts);
        cap_counts = cap;
    }
    if (++counts[seq] == n_opened) emit("{\"done\": %ld}", seq); /* as bench.swarm counts */
}

static void on_frames(conn_t *c) {
    static char message[MAX_MESSAGE + 1];
    size_t at = 0;
    while (c->state != CLOSED && c->state != FAILED) {
        unsigned char *p = (unsigned char *)c->in.p + at;
        size_t avail = c->in.len - at;
        if (avail < 2) break;
        int fin = p[0] & 0x80, op = p[0] & 0x0f;
        uint64_t n = p[1] & 0x7f;
        size_t h = 2;
        if (p[1] & 0x80) h += 4; /* a masked server frame: not expected, unmasked below */
        if (n == 126) {
            if (avail < 4) break;
            n = (p[2] << 8) | p[3];
            h += 2;
        } else if (n == 127) {
            if (avail < 10) break;
            n = 0;
            for (int i = 0; i < 8; i++) n = (n << 8) | p[2 + i];
            h += 8;
        }
        if (n > MAX_MESSAGE) {
            finish(c, FAILED);
            return;
        }
        if (avail < h + n) break;
        char *payload = (char *)p + h;
        if (p[1] & 0x80)
            for (uint64_t i = 0; i < n; i++) payload[i] ^= p[h - 4 + (i & 3)];
        at += h + n;
        if (op == 0x8) { /* close: answer with its code, then the server ends the TCP */
            if (c->state == UPGRADING || c->state == WAITING_READY) { /* refused: 4029, 4401... */
                int code = n >= 2 ? ((unsigned char)payload[0] << 8 | (unsigned char)payload[1]) : 1005;
                snprintf(first_error, sizeof first_error, "closed with %d before ready", code);
                send_frame(c, 0x8, payload, n >= 2 ? 2 : 0);
                finish(c, FAILED);
                return;
            }
            if (c->state != CLOSING) {
                if (c->state == OPEN) closed_count++; /* counted before the answer leaves */
                c->state = CLOSING;
                send_frame(c, 0x8, payload, n >= 2 ? 2 : 0);
            }
            continue;
        }
        if (op == 0x9) {
            send_frame(c, 0xA, payload, n);
            continue;
        }
        if (op == 0xA) continue;
        if (op == 0x0 || !fin) { /* a fragment */
            if (op != 0x0) c->frag_op = op;
            buf_add(&c->frag, payload, n);
            if (c->frag.len > MAX_MESSAGE) {
                finish(c, FAILED);
                return;
            }
            if (!fin) continue;
            payload = c->frag.p;
            n = c->frag.len;
            op = c->frag_op;
        }
        if (op == 0x1) {
            memcpy(message, payload, n);
            message[n] = 0;
            on_text(c, message);
        }
        c->frag.len = 0;
    }
    if (c->state != CLOSED && c->state != FAILED) buf_drop(&c->in, at);
}

static void on_upgrade(conn_t *c) {
    char *end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
    if (!end) {
        if (c->in.len > 65536) finish(c, FAILED);
        return;
    }
    if (c->in.len < 12 || memcmp(c->in.p + 9, "101", 3) != 0) {
        snprintf(first_error, sizeof first_error, "upgrade refused: %.60s", c->in.p);
        finish(c, FAILED);
        return;
    }
    buf_drop(&c->in, end + 4 - c->in.p);
    c->state = WAITING_READY;
    on_frames(c);
}

static void on_readable(conn_t *c) {
    char chunk[65536];
    for (;;) {
        ssize_t n = recv(c->fd, chunk, sizeof chunk, 0);
        if (n < 0) {
            if (errno == EAGAIN) return;
            if (errno == EINTR) continue;
            finish(c, c->state == CLOSING ? CLOSED : FAILED);
            return;
        }
        if (n == 0) { /* the server ended the connection */
            finish(c, c->state == CLOSING || c->state == OPEN ? CLOSED : FAILED);
            return;
        }
        buf_add(&c->in, chunk, n);
        if (c->state == UPGRADING)
            on_upgrade(c);
        else
            on_frames(c);
        if (c->state == CLOSED || c->state == FAILED) return;
        /* Level-triggered: what is left is read at the next wake-up, without a recv that
         * only says EAGAIN (a system call a message at this client's rates). */
        if ((size_t)n < sizeof chunk) return;
    }
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        snprintf(first_error, sizeof first_error, "connect: %s", strerror(err));
        finish(c, FAILED);
        return;
    }
    unsigned char key[16];
    for (int i = 0; i < 16; i++) key[i] = next_random() & 0xff;
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char key64[25];
    int o = 0;
    for (int i = 0; i < 16; i += 3) {
        uint32_t v = key[i] << 16 | (i + 1 < 16 ? key[i + 1] << 8 : 0) | (i + 2 < 16 ? key[i + 2] : 0);
        key64[o++] = b64[(v >> 18) & 63];
        key64[o++] = b64[(v >> 12) & 63];
        key64[o++] = i + 1 < 16 ? b64[(v >> 6) & 63] : '=';
        key64[o++] = i + 2 < 16 ? b64[v & 63] : '=';
    }
    key64[o] = 0;
    char request[512];
    int n = snprintf(request, sizeof request,
                     "GET /websocket/?uid=%d HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     c->uid, c->host, c->port, key64);
    c->state = UPGRADING;
    buf_add(&c->out, request, n);
    flush(c);
}

/* -- commands ------------------------------------------------------------------------ */

static double num(const char *line, const char *key, double otherwise) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = field(line, pattern);
    return p ? strtod(p, NULL) : otherwise;
}

static void cmd_open(const char *line) {
    const char *p = field(line, "\"conns\":");
    int first = n_conns;
    opened_now = failed_now = 0;
    open_pending = 1;
    first_error[0] = 0;
    while (p && (p = strstr(p, "[\"")) != NULL) {
        p += 2;
        const char *end = strchr(p, '"');
        if (!end) break;
        /* ws://HOST:PORT */
        const char *h = strstr(p, "://");
        h = h && h < end ? h + 3 : p;
        const char *colon = memchr(h, ':', end - h);
        p = strchr(end, ',');
        if (!p) break;
        int uid = atoi(p + 1);
        conns = realloc(conns, (n_conns + 1) * sizeof *conns);
        conn_t *c = conns ? calloc(1, sizeof *c) : NULL;
        if (!c) die("alloc");
        conns[n_conns] = c;
        if (colon) { /* each connection to its own base */
            snprintf(c->host, sizeof c->host, "%.*s", (int)(colon - h), h);
            c->port = atoi(colon + 1);
        } else {
            snprintf(c->host, sizeof c->host, "127.0.0.1");
            c->port = 80;
        }
        c->uid = uid;
        c->last = -1;
        for (int i = 0; i < 4; i++) c->mask[i] = (next_random() & 0xfe) | 1; /* never 0 */
        n_conns++;
    }
    for (int i = first; i < n_conns; i++) {
        conn_t *c = conns[i];
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(c->port)};
        inet_pton(AF_INET, c->host, &addr.sin_addr);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0) die("socket");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->state = CONNECTING;
        opening++;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        c->writable_wanted = 1;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl add");
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
            snprintf(first_error, sizeof first_error, "connect: %s", strerror(errno));
            finish(c, FAILED);
        }
    }
}

static void cmd_track(const char *line) {
    relay_mode = strstr(line, "\"relay\"") != NULL;
    tracking = 1;
    n_lat = 0;
    last_in = 0;
    dups = errors = 0;
    free(seen);
    seen = NULL;
    cap_seen = n_seen = 0;
    if (counts) memset(counts, 0, cap_counts * sizeof *counts);
    for (int i = 0; i < n_conns; i++) conns[i]->last = -1;
    getrusage(RUSAGE_SELF, &ru0);
    emit("{\"tracking\": %d}", n_opened);
}

static void cmd_send(const char *line) {
    senders = (int)num(line, "senders", 1);
    src0 = (int)num(line, "src0", 0);
    rate = num(line, "rate", 1);
    start_at = num(line, "start", now());
    total = (long)(rate * num(line, "seconds", 1));
    free(targets);
    targets = NULL;
    n_targets = 0;
    const char *p = field(line, "\"targets\":");
    if (p && *p == '[') {
        p++;
        while (*p && *p != ']') {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) break;
            targets = realloc(targets, (n_targets + 1) * sizeof *targets);
            targets[n_targets++] = (int)v;
            p = end;
            while (*p == ',' || *p == ' ') p++;
        }
    }
    if (senders > n_conns) senders = n_conns;
    rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(src0 + 1);
    k_sent = 0;
    late_max = 0;
    sending = senders > 0 && n_targets > 0 && total > 0;
    if (!sending) emit("{\"sent\": 0, \"late_max_ms\": 0.0}");
}

static void pump_sends(void) {
    double t = now();
    char text[512];
    blocked = 0;
    while (sending && k_sent < total) {
        double due = start_at + k_sent / rate;
        if (due > t) break;
        int i = k_sent % senders;
        conn_t *c = conns[i];
        if (c->state != OPEN) { /* a dead sender's messages are not sent: counted lost */
            k_sent++;
            continue;
        }
        if (c->out.len > HIGH_WATER) { /* back-pressure: wait for the socket */
            blocked = 1;
            break;
        }
        int to = targets[next_random() % n_targets];
        int n = snprintf(text, sizeof text,
                         "{\"endpoint\":\"relay\",\"object\":{\"className\":\"BenchRelay\",\"data\":"
                         "{\"to\": %d, \"src\": %d, \"seq\": %d, \"t\": %.17g, \"pad\": \"" PAD "\"}}}",
                         to, src0 + i, c->seq++, due);
        send_frame(c, 0x1, text, n);
        if (t - due > late_max) late_max = t - due;
        k_sent++;
    }
    if (sending && k_sent >= total) {
        sending = 0;
        emit("{\"sent\": %ld, \"late_max_ms\": %.1f}", k_sent, late_max * 1000);
    }
}

static void cmd_stats(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double user = (ru.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
    double sys = (ru.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    fputs("{\"latencies_ms\": [", stdout);
    for (size_t i = 0; i < n_lat; i++) printf(i ? ", %.3f" : "%.3f", lat[i] * 1000);
    printf("], \"delivered\": %zu, \"duplicates\": %ld, \"errors\": %ld, \"closed\": %ld, ", n_lat,
           dups, errors, closed_count);
    if (last_in > 0)
        printf("\"last\": %.17g, ", last_in);
    else
        fputs("\"last\": null, ", stdout);
    printf("\"cpu_s\": %.3f, \"sys_s\": %.3f", user + sys, sys);
    if (relay_mode) {
        fputs(", \"scheduled\": [", stdout);
        for (size_t i = 0; i < n_lat; i++) printf(i ? ", %.17g" : "%.17g", sched[i]);
        fputs("]", stdout);
    }
    fputs("}\n", stdout);
    fflush(stdout);
}

static void cmd_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    emit("{\"rss_kb\": %ld}", kb);
}

static void cmd_close(void) {
    closing_all = 1;
    close_deadline = now() + 10;
    for (int i = 0; i < n_conns; i++) {
        conn_t *c = conns[i];
        if (c->state == OPEN) {
            send_frame(c, 0x8, "\x03\xe8", 2); /* 1000 */
            c->state = CLOSING;
        } else if (c->state != CLOSED && c->state != FAILED) {
            finish(c, FAILED);
        }
    }
}

static int all_closed(void) {
    for (int i = 0; i < n_conns; i++)
        if (conns[i]->state != CLOSED && conns[i]->state != FAILED) return 0;
    return 1;
}

static void on_command(char *line) {
    const char *cmd = field(line, "\"cmd\":");
    if (!cmd) {
        emit("{\"error\": \"no cmd\"}");
    } else if (!strncmp(cmd, "\"open\"", 6)) {
        if (!strstr(line, "\"streampod\"")) {
            emit("{\"opened\": 0, \"failed\": 0, \"errors\": [\"cswarm speaks the streampod dialect only\"]}");
            return;
        }
        cmd_open(line);
    } else if (!strncmp(cmd, "\"track\"", 7)) {
        cmd_track(line);
    } else if (!strncmp(cmd, "\"count\"", 7)) {
        emit("{\"delivered\": %zu}", n_lat);
    } else if (!strncmp(cmd, "\"send\"", 6)) {
        cmd_send(line);
    } else if (!strncmp(cmd, "\"stats\"", 7)) {
        cmd_stats();
    } else if (!strncmp(cmd, "\"rss\"", 5)) {
        cmd_rss();
    } else if (!strncmp(cmd, "\"close\"", 7)) {
        cmd_close();
    } else {
        emit("{\"error\": \"unknown command\"}");
    }
}

int main(void) {
    struct rlimit nofile;
    getrlimit(RLIMIT_NOFILE, &nofile);
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
    rng = 0x2545F4914F6CDD1DULL ^ (uint64_t)getpid() ^ (uint64_t)(now() * 1e9);
    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) die("epoll_ctl stdin");
    buf_t input = {0};
    int stdin_open = 1;
    struct epoll_event events[256];
    for (;;) {
        double timeout = 0.5;
        if (sending && k_sent < total && !blocked) {
            timeout = start_at + k_sent / rate - now();
            if (timeout < 0) timeout = 0;
        }
        struct timespec ts = {.tv_sec = (time_t)timeout, .tv_nsec = (long)((timeout - (time_t)timeout) * 1e9)};
        int n = epoll_pwait2(epfd, events, 256, &ts, NULL);
        if (n < 0 && errno != EINTR) die("epoll_pwait2");
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (!c) { /* stdin */
                char chunk[65536];
                ssize_t got;
                while ((got = read(0, chunk, sizeof chunk)) > 0) buf_add(&input, chunk, got);
                if (got == 0) stdin_open = 0;
                char *nl;
                while (input.len && (nl = memchr(input.p, '\n', input.len)) != NULL) {
                    *nl = 0;
                    on_command(input.p);
                    buf_drop(&input, nl + 1 - input.p);
                }
                continue;
            }
            if (c->fd < 0) continue;
            if (c->state == CONNECTING && (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                on_connected(c);
                continue;
            }
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (c->fd >= 0 && (events[i].events & EPOLLOUT)) flush(c);
        }
        if (open_pending && opening == 0) {
            open_pending = 0;
            for (char *e = first_error; *e; e++)
                if (*e == '"' || *e == '\\' || (unsigned char)*e < 32) *e = '?';
            if (first_error[0])
                emit("{\"opened\": %d, \"failed\": %d, \"errors\": [\"%s\"]}", opened_now, failed_now, first_error);
            else
                emit("{\"opened\": %d, \"failed\": %d, \"errors\": []}", opened_now, failed_now);
        }
        pump_sends();
        if (closing_all && (all_closed() || now() > close_deadline)) {
            emit("{\"closed\": %d}", n_conns);
            return 0;
        }
        if (!stdin_open && !closing_all) return 0;
    }
}
