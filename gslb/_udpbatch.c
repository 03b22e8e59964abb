/*
 * gslb._udpbatch: answer a batch of UDP queries with two system calls.
 *
 * serve(fd, answer, on_error) reads up to BATCH datagrams with recvmmsg(2),
 * calls answer(data, client_ip, 512) for each (the Responder's own method: all
 * DNS logic stays in Python), and sends every reply with sendmmsg(2). It
 * returns how many datagrams it read; 0 when none was waiting. An exception
 * raised by answer() is handed to on_error(data, exc) and that query is
 * dropped, as the pure-Python loop in server.py does.
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
static struct sockaddr_storage addrs[BATCH];
static struct mmsghdr in_msgs[BATCH], out_msgs[BATCH];
static struct iovec in_iov[BATCH], out_iov[BATCH];
static PyObject *udp_limit;

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

static PyObject *serve(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *answer, *on_error;
    PyObject *replies[BATCH];
    int n, i, count = 0;

    if (!PyArg_ParseTuple(args, "iOO", &fd, &answer, &on_error))
        return NULL;
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
        Py_DECREF(replies[i]);
    return PyLong_FromLong(n);

fail:
    send_all(fd, count);
    for (i = 0; i < count; i++)
        Py_DECREF(replies[i]);
    return NULL;
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS,
     "serve(fd, answer, on_error) -> datagrams read: recvmmsg, answer each, sendmmsg."},
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
    if (udp_limit == NULL)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL)
        PyModule_AddIntConstant(mod, "BATCH", BATCH);
    return mod;
}
