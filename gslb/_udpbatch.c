/*
 * gslb._udpbatch: answer a batch of UDP queries with two system calls.
 *
 * serve(fd, answer, on_error[, cache, counters, by_client]) reads up to BATCH datagrams
 * with recvmmsg(2), answers each, and sends every reply with sendmmsg(2). It
 * returns how many datagrams it read; 0 when none was waiting.
 *
 * A query whose bytes after the ID are a key of `cache` (the Responder's
 * response cache: key -> (reply after the ID, counter slot, ...)) is answered
 * here: its ID, then the cached bytes, and counters[slot] += 1, exactly what
 * Responder.answer does for such a hit when rate limiting is off (the caller
 * passes no cache when it is on). A query not in `cache` is looked up in
 * `by_client` as (bytes after the ID, client address text): the cache of
 * answers that depend on the client's own address (no usable ECS), which is
 * half of what resolvers without ECS ask. Every other query goes to
 * answer(data, client_ip, 512), the Responder's own method, where all DNS
 * logic lives. An exception raised by answer() is handed to
 * on_error(data, exc) and that query is dropped, as the Python loop does.
 *
 * Batch() holds the same buffers for one socket served by a thread of its own:
 * Batch.recv(fd) waits in recvmmsg(2) with the GIL released (the socket is
 * blocking, with SO_RCVTIMEO so the thread can notice a stop), and
 * Batch.reply(fd, answer, on_error[, cache, counters, by_client]) answers what
 * it read, as serve() does. Two system calls per batch, as gdnsd's threads
 * make, instead of epoll_wait, recvmmsg, sendmmsg and the recvmmsg that finds
 * the socket empty. Batch(yield_cpu=True) gives the CPU away once before it
 * sleeps after a loaded batch (see yield_first).
 *
 * Optional: when it cannot be built, server.py uses recvfrom/sendto.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define BUFSIZE 4096
#define YIELD_AFTER 8                 /* a batch this big: the socket is under load */
#define YIELD_SLOW_US 1000            /* yields averaging longer than this ... */
#define YIELD_PAUSE_NS 100000000LL    /* ... stop for 100 ms, then one looks again */

/* The buffers of one batch: serve() shares one set (it runs with the GIL held, from
 * the event loop's thread); each Batch object has its own. */
struct buffers {
    char bufs[BATCH][BUFSIZE];
    char outbufs[BATCH][BUFSIZE];
    struct sockaddr_storage addrs[BATCH];
    struct mmsghdr in_msgs[BATCH], out_msgs[BATCH];
    struct iovec in_iov[BATCH], out_iov[BATCH];
    int received;                   /* datagrams in bufs not answered yet */
    int last;                       /* datagrams the last recvmmsg returned */
    int yield_cpu;                  /* Batch(yield_cpu=True): see yield_first */
    long long yield_avg_ns;         /* moving average of how long a yield lasted */
    long long yield_slow_ns;        /* Batch(slow_us=YIELD_SLOW_US) */
    long long yield_resume_ns;      /* CLOCK_MONOTONIC: no yield before this */
    unsigned long yields, pauses;   /* for Batch.stats() */
};

static struct buffers shared;
static PyObject *udp_limit, *one;

/* The last client's address text, reused while the same address keeps asking. */
static struct sockaddr_storage last_addr;
static PyObject *last_client;

static PyObject *client_text(const struct sockaddr_storage *sa, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];
    const void *raw;
    size_t rawlen;
    int family = sa->ss_family;

    if (family == AF_INET) {
        raw = &((const struct sockaddr_in *)sa)->sin_addr;
        rawlen = sizeof(struct in_addr);
    } else if (family == AF_INET6) {
        raw = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        rawlen = sizeof(struct in6_addr);
    } else {
        return PyUnicode_FromString("0.0.0.0");
    }
    if (last_client != NULL && last_addr.ss_family == family) {
        const void *old = family == AF_INET
            ? (const void *)&((const struct sockaddr_in *)&last_addr)->sin_addr
            : (const void *)&((const struct sockaddr_in6 *)&last_addr)->sin6_addr;
        if (memcmp(old, raw, rawlen) == 0) {
            Py_INCREF(last_client);
            return last_client;
        }
    }
    if (inet_ntop(family, raw, host, sizeof host) == NULL)
        return PyUnicode_FromString("0.0.0.0");
    PyObject *text = PyUnicode_FromString(host);
    if (text == NULL)
        return NULL;
    Py_XDECREF(last_client);
    Py_INCREF(text);
    last_client = text;
    memcpy(&last_addr, sa, len < sizeof last_addr ? len : sizeof last_addr);
    return text;
}

static void report(PyObject *on_error, PyObject *data)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *res = PyObject_CallFunctionObjArgs(on_error, data, value ? value : Py_None, NULL);
    Py_XDECREF(res);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    PyErr_Clear();
}

static void send_all(struct buffers *b, int fd, int count)
{
    int sent = 0;
    while (sent < count) {
        int r = sendmmsg(fd, b->out_msgs + sent, (unsigned int)(count - sent), MSG_DONTWAIT);
        if (r > 0) {
            sent += r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            return;                     /* the send buffer is full: drop the rest */
        } else {
            sent += 1;                  /* this reply cannot go: skip it */
        }
    }
}

/* The entry for (key, client) in by_client (borrowed), or NULL. */
static PyObject *client_entry(PyObject *by_client, PyObject *key,
                              const struct sockaddr_storage *sa, socklen_t salen)
{
    if (by_client == Py_None || PyDict_GET_SIZE(by_client) == 0)
        return NULL;
    PyObject *client = client_text(sa, salen);
    if (client == NULL)
        return NULL;
    PyObject *pair = PyTuple_Pack(2, key, client);
    Py_DECREF(client);
    if (pair == NULL)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(by_client, pair);    /* borrowed */
    Py_DECREF(pair);
    return entry;
}

/* A cache hit: the reply goes into outbufs[slot_out]; 1 if answered, 0 if not cached. */
static int from_cache(struct buffers *b, PyObject *cache, PyObject *by_client,
                      PyObject *counters,
                      const char *data, size_t len, const struct sockaddr_storage *sa,
                      socklen_t salen, int slot_out)
{
    if (len < 12 || (data[2] & 0x80))
        return 0;
    PyObject *key = PyBytes_FromStringAndSize(data + 2, (Py_ssize_t)(len - 2));
    if (key == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *entry = PyDict_GetItemWithError(cache, key);      /* borrowed */
    if (entry == NULL && !PyErr_Occurred())
        entry = client_entry(by_client, key, sa, salen);
    Py_DECREF(key);
    if (entry == NULL || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 2) {
        PyErr_Clear();
        return 0;
    }
    PyObject *body = PyTuple_GET_ITEM(entry, 0);
    if (!PyBytes_Check(body) || PyBytes_GET_SIZE(body) + 2 > BUFSIZE)
        return 0;
    if (counters != Py_None) {
        Py_ssize_t slot = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 1));
        PyObject *old = slot >= 0 ? PyList_GetItem(counters, slot) : NULL;
        PyObject *new = old ? PyNumber_Add(old, one) : NULL;
        if (new == NULL || PyList_SetItem(counters, slot, new) < 0)
            PyErr_Clear();
    }
    memcpy(b->outbufs[slot_out], data, 2);
    memcpy(b->outbufs[slot_out] + 2, PyBytes_AS_STRING(body), (size_t)PyBytes_GET_SIZE(body));
    b->out_iov[slot_out].iov_base = b->outbufs[slot_out];
    b->out_iov[slot_out].iov_len = (size_t)PyBytes_GET_SIZE(body) + 2;
    return 1;
}

static void prepare(struct buffers *b)
{
    for (int i = 0; i < BATCH; i++) {
        b->in_iov[i].iov_base = b->bufs[i];
        b->in_iov[i].iov_len = BUFSIZE;
        memset(&b->in_msgs[i].msg_hdr, 0, sizeof b->in_msgs[i].msg_hdr);
        b->in_msgs[i].msg_hdr.msg_name = &b->addrs[i];
        b->in_msgs[i].msg_hdr.msg_namelen = sizeof b->addrs[i];
        b->in_msgs[i].msg_hdr.msg_iov = &b->in_iov[i];
        b->in_msgs[i].msg_hdr.msg_iovlen = 1;
    }
}

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Under load a thread that sleeps as soon as its socket is empty is woken again for
 * the next few datagrams: a wake-up and two context switches per small batch, most
 * of a query's kernel time. After a batch of YIELD_AFTER or more, an empty socket
 * first gives the CPU once to whatever else is runnable on it (the other worker, the
 * processes sending the queries), so the queue fills meanwhile and the next recvmmsg
 * takes a bigger batch; with nothing else runnable sched_yield returns at once. A
 * CPU-bound neighbour would keep each such batch waiting for its whole time slice
 * (a millisecond or more): when the yields average more than YIELD_SLOW_US there are
 * none for YIELD_PAUSE_NS. A light load (smaller batches) never yields, so its
 * latency is that of a plain blocking read. Called without the GIL, by receive()
 * once it found the socket empty after such a batch. */
static void yield_first(struct buffers *b)
{
    long long start = now_ns();
    if (start < b->yield_resume_ns)
        return;
    sched_yield();
    long long took = now_ns() - start;
    b->yields++;
    b->yield_avg_ns += (took - b->yield_avg_ns) / 8;
    if (b->yield_avg_ns > b->yield_slow_ns) {
        b->yield_resume_ns = start + took + YIELD_PAUSE_NS;
        b->pauses++;
    }
}

/* recvmmsg into b: the count, 0 if nothing came (EAGAIN: empty, or SO_RCVTIMEO), -1 with
 * errno set. `wait`: block for the first datagram with the GIL released. */
static int receive(struct buffers *b, int fd, int wait)
{
    int n;
    prepare(b);
    do {
        if (wait) {
            Py_BEGIN_ALLOW_THREADS
            n = -1;
            if (b->yield_cpu && b->last >= YIELD_AFTER) {
                n = recvmmsg(fd, b->in_msgs, BATCH, MSG_DONTWAIT, NULL);
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    yield_first(b);
                else
                    wait = 0;           /* a batch, or an error to report */
            }
            if (wait)
                n = recvmmsg(fd, b->in_msgs, BATCH, MSG_WAITFORONE, NULL);
            Py_END_ALLOW_THREADS
        } else {
            n = recvmmsg(fd, b->in_msgs, BATCH, MSG_DONTWAIT, NULL);
        }
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        n = 0;
    b->received = b->last = n > 0 ? n : 0;
    return n;
}

static void address_reply(struct buffers *b, int count, int i)
{
    memset(&b->out_msgs[count].msg_hdr, 0, sizeof b->out_msgs[count].msg_hdr);
    b->out_msgs[count].msg_hdr.msg_name = &b->addrs[i];
    b->out_msgs[count].msg_hdr.msg_namelen = b->in_msgs[i].msg_hdr.msg_namelen;
    b->out_msgs[count].msg_hdr.msg_iov = &b->out_iov[count];
    b->out_msgs[count].msg_hdr.msg_iovlen = 1;
}

static int check_maps(PyObject *cache, PyObject *counters, PyObject *by_client)
{
    if (by_client != Py_None && !PyDict_Check(by_client)) {
        PyErr_SetString(PyExc_TypeError, "by_client must be a dict or None");
        return -1;
    }
    if (cache != Py_None && !PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "cache must be a dict or None");
        return -1;
    }
    if (counters != Py_None && !PyList_Check(counters)) {
        PyErr_SetString(PyExc_TypeError, "counters must be a list or None");
        return -1;
    }
    return 0;
}

/* Answer the datagrams in b (cache hits here, the rest through answer) and send the
 * replies with sendmmsg. 0, or -1 with an exception set. */
static int answer_all(struct buffers *b, int fd, PyObject *answer, PyObject *on_error,
                      PyObject *cache, PyObject *counters, PyObject *by_client)
{
    PyObject *replies[BATCH];
    int i, count = 0, n = b->received, result = 0;

    b->received = 0;
    for (i = 0; i < n; i++) {
        if (cache != Py_None && from_cache(b, cache, by_client, counters, b->bufs[i],
                                           b->in_msgs[i].msg_len, &b->addrs[i],
                                           b->in_msgs[i].msg_hdr.msg_namelen, count)) {
            replies[count] = NULL;                  /* the bytes are in outbufs[count] */
            address_reply(b, count++, i);
            continue;
        }
        PyObject *data = PyBytes_FromStringAndSize(b->bufs[i], b->in_msgs[i].msg_len);
        PyObject *client = data ? client_text(&b->addrs[i], b->in_msgs[i].msg_hdr.msg_namelen)
                                : NULL;
        if (client == NULL) {           /* out of memory: send what is answered */
            Py_XDECREF(data);
            result = -1;
            break;
        }
        PyObject *argv[3] = {data, client, udp_limit};
        PyObject *out = PyObject_Vectorcall(answer, argv, 3, NULL);
        Py_DECREF(client);
        if (out == NULL) {
            report(on_error, data);
            Py_DECREF(data);
            continue;
        }
        Py_DECREF(data);
        if (!PyBytes_Check(out)) {      /* None: drop this query */
            Py_DECREF(out);
            continue;
        }
        replies[count] = out;
        b->out_iov[count].iov_base = PyBytes_AS_STRING(out);
        b->out_iov[count].iov_len = (size_t)PyBytes_GET_SIZE(out);
        address_reply(b, count++, i);
    }
    send_all(b, fd, count);
    for (i = 0; i < count; i++)
        Py_XDECREF(replies[i]);
    return result;
}

static PyObject *serve(PyObject *self, PyObject *args)
{
    int fd, n;
    PyObject *answer, *on_error, *cache = Py_None, *counters = Py_None, *by_client = Py_None;

    if (!PyArg_ParseTuple(args, "iOO|OOO", &fd, &answer, &on_error, &cache, &counters,
                          &by_client) || check_maps(cache, counters, by_client) < 0)
        return NULL;
    n = receive(&shared, fd, 0);
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (answer_all(&shared, fd, answer, on_error, cache, counters, by_client) < 0)
        return NULL;
    return PyLong_FromLong(n);
}

/* --- Batch: one socket's buffers, for a thread that waits in recvmmsg ------------------ */

typedef struct {
    PyObject_HEAD
    struct buffers *b;
} Batch;

static PyObject *batch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"yield_cpu", "slow_us", NULL};
    int yield_cpu = 0, slow_us = YIELD_SLOW_US;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pi", keywords, &yield_cpu, &slow_us))
        return NULL;
    Batch *self = (Batch *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->b = PyMem_Calloc(1, sizeof(struct buffers));
    if (self->b == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->b->yield_cpu = yield_cpu;
    self->b->yield_slow_ns = slow_us * 1000LL;
    return (PyObject *)self;
}

static void batch_dealloc(Batch *self)
{
    PyMem_Free(self->b);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *batch_recv(Batch *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    int n = receive(self->b, fd, 1);
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(n);
}

static PyObject *batch_reply(Batch *self, PyObject *args)
{
    int fd;
    PyObject *answer, *on_error, *cache = Py_None, *counters = Py_None, *by_client = Py_None;
    if (!PyArg_ParseTuple(args, "iOO|OOO", &fd, &answer, &on_error, &cache, &counters,
                          &by_client) || check_maps(cache, counters, by_client) < 0)
        return NULL;
    if (answer_all(self->b, fd, answer, on_error, cache, counters, by_client) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *batch_stats(Batch *self, PyObject *unused)
{
    return Py_BuildValue("{s:k,s:k,s:d}", "yields", self->b->yields, "pauses",
                         self->b->pauses, "yield_avg_us", self->b->yield_avg_ns / 1000.0);
}

static PyMethodDef batch_methods[] = {
    {"recv", (PyCFunction)batch_recv, METH_VARARGS,
     "recv(fd) -> datagrams read: waits in recvmmsg without the GIL; 0 on SO_RCVTIMEO."},
    {"reply", (PyCFunction)batch_reply, METH_VARARGS,
     "reply(fd, answer, on_error[, cache, counters, by_client]): answer what recv read "
     "and send the replies with sendmmsg."},
    {"stats", (PyCFunction)batch_stats, METH_NOARGS,
     "stats() -> {'yields', 'pauses', 'yield_avg_us'}: the CPU given away before sleeping."},
    {NULL, NULL, 0, NULL}
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gslb._udpbatch.Batch",
    .tp_doc = "Batch(yield_cpu=False, slow_us=1000): one socket's recvmmsg/sendmmsg buffers, "
              "for a thread of its own; yield_cpu: give the CPU away once before sleeping "
              "after a loaded batch, pausing that for 100 ms when yields average more than "
              "slow_us.",
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = batch_new,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_methods = batch_methods,
};

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS,
     "serve(fd, answer, on_error[, cache, counters, by_client]) -> datagrams read: recvmmsg, "
     "answer "
     "each (cache hits here, the rest through answer), sendmmsg."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gslb._udpbatch",
    "Batched UDP receive/answer/send for the DNS server (Linux recvmmsg/sendmmsg).",
    -1, methods
};

PyMODINIT_FUNC PyInit__udpbatch(void)
{
    udp_limit = PyLong_FromLong(512);
    one = PyLong_FromLong(1);
    if (udp_limit == NULL || one == NULL)
        return NULL;
    if (PyType_Ready(&BatchType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    PyModule_AddIntConstant(mod, "BATCH", BATCH);
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(mod, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
