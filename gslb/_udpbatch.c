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
 * Optional: when it cannot be built, server.py uses recvfrom/sendto.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define BUFSIZE 4096

/* One set of buffers per process: serve() runs with the GIL held, from one thread. */
static char bufs[BATCH][BUFSIZE];
static char outbufs[BATCH][BUFSIZE];
static struct sockaddr_storage addrs[BATCH];
static struct mmsghdr in_msgs[BATCH], out_msgs[BATCH];
static struct iovec in_iov[BATCH], out_iov[BATCH];
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

static void send_all(int fd, int count)
{
    int sent = 0;
    while (sent < count) {
        int r = sendmmsg(fd, out_msgs + sent, (unsigned int)(count - sent), MSG_DONTWAIT);
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
static int from_cache(PyObject *cache, PyObject *by_client, PyObject *counters,
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
    memcpy(outbufs[slot_out], data, 2);
    memcpy(outbufs[slot_out] + 2, PyBytes_AS_STRING(body), (size_t)PyBytes_GET_SIZE(body));
    out_iov[slot_out].iov_base = outbufs[slot_out];
    out_iov[slot_out].iov_len = (size_t)PyBytes_GET_SIZE(body) + 2;
    return 1;
}

static PyObject *serve(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *answer, *on_error, *cache = Py_None, *counters = Py_None, *by_client = Py_None;
    PyObject *replies[BATCH];
    int n, i, count = 0;

    if (!PyArg_ParseTuple(args, "iOO|OOO", &fd, &answer, &on_error, &cache, &counters,
                          &by_client))
        return NULL;
    if (by_client != Py_None && !PyDict_Check(by_client)) {
        PyErr_SetString(PyExc_TypeError, "by_client must be a dict or None");
        return NULL;
    }
    if (cache != Py_None && !PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "cache must be a dict or None");
        return NULL;
    }
    if (counters != Py_None && !PyList_Check(counters)) {
        PyErr_SetString(PyExc_TypeError, "counters must be a list or None");
        return NULL;
    }
    for (i = 0; i < BATCH; i++) {
        in_iov[i].iov_base = bufs[i];
        in_iov[i].iov_len = BUFSIZE;
        memset(&in_msgs[i].msg_hdr, 0, sizeof in_msgs[i].msg_hdr);
        in_msgs[i].msg_hdr.msg_name = &addrs[i];
        in_msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
        in_msgs[i].msg_hdr.msg_iov = &in_iov[i];
        in_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    do {
        n = recvmmsg(fd, in_msgs, BATCH, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (i = 0; i < n; i++) {
        if (cache != Py_None && from_cache(cache, by_client, counters, bufs[i], in_msgs[i].msg_len,
                                           &addrs[i], in_msgs[i].msg_hdr.msg_namelen, count)) {
            replies[count] = NULL;                  /* the bytes are in outbufs[count] */
            memset(&out_msgs[count].msg_hdr, 0, sizeof out_msgs[count].msg_hdr);
            out_msgs[count].msg_hdr.msg_name = &addrs[i];
            out_msgs[count].msg_hdr.msg_namelen = in_msgs[i].msg_hdr.msg_namelen;
            out_msgs[count].msg_hdr.msg_iov = &out_iov[count];
            out_msgs[count].msg_hdr.msg_iovlen = 1;
            count++;
            continue;
        }
        PyObject *data = PyBytes_FromStringAndSize(bufs[i], in_msgs[i].msg_len);
        PyObject *client = data ? client_text(&addrs[i], in_msgs[i].msg_hdr.msg_namelen) : NULL;
        if (client == NULL) {
            Py_XDECREF(data);
            goto fail;
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
        out_iov[count].iov_base = PyBytes_AS_STRING(out);
        out_iov[count].iov_len = (size_t)PyBytes_GET_SIZE(out);
        memset(&out_msgs[count].msg_hdr, 0, sizeof out_msgs[count].msg_hdr);
        out_msgs[count].msg_hdr.msg_name = &addrs[i];
        out_msgs[count].msg_hdr.msg_namelen = in_msgs[i].msg_hdr.msg_namelen;
        out_msgs[count].msg_hdr.msg_iov = &out_iov[count];
        out_msgs[count].msg_hdr.msg_iovlen = 1;
        count++;
    }
    send_all(fd, count);
    for (i = 0; i < count; i++)
        Py_XDECREF(replies[i]);
    return PyLong_FromLong(n);

fail:
    send_all(fd, count);
    for (i = 0; i < count; i++)
        Py_XDECREF(replies[i]);
    return NULL;
}

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
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL)
        PyModule_AddIntConstant(mod, "BATCH", BATCH);
    return mod;
}
