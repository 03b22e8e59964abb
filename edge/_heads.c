/*
 * edge._heads: the pass-through shortcut's two HTTP/1.1 heads, each read in one call.
 *
 * llhttp (httptools) reads a head through a Python callback per field; on a
 * pass-through request that is about twenty calls on the two connections, and the
 * shortcut then walks the same fields again in Python to build the other head.
 * These two functions read a whole head and return what the shortcut needs:
 *
 * request(data, flagged) -> None | (method, target, version, fields, keep_alive,
 *                                    host, hosts, flagged_seen, lines)
 *   `data` must be exactly one GET or HEAD request head, complete, nothing after
 *   it. `fields`: [(name, value)] as llhttp gives them; `lines`: every field but
 *   Host as "name: value\r\n" (the origin request's); `flagged_seen`: a field whose
 *   lower-case name is in the tuple `flagged`, or a Connection other than keep-alive.
 *
 * response(data, special, drop, head) -> None | (head_size, status, reason, length,
 *                                                keep_alive, lines, dated, via, statuses)
 *   `data` starts with a whole final (>= 200) response head framed by Content-Length
 *   (or with no body: `head` is true for a HEAD request, and 204/304). `lines`: the
 *   fields whose lower-case names are in neither `special` nor `drop`, as
 *   "name: value\r\n"; `dated`: a Date among them; `via`: the Via values joined by
 *   ", " (or None); `statuses`: the Cache-Status values, a tuple.
 *
 * Both are strict: whatever they do not take (another method or version, a body,
 * Transfer-Encoding, Upgrade, a Connection naming other fields, Proxy-Connection
 * (which llhttp reads as Connection), obs-fold, a
 * control character, a bare LF, a head not yet whole, more than MAX_FIELDS
 * fields) gives None, and the caller feeds the same bytes to llhttp, which
 * answers it as it always has, errors included. So taking a head here never
 * accepts what llhttp would refuse. tests/edge/test_heads.py holds the two equal.
 *
 * Optional: when it cannot be built, the shortcut uses llhttp alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#define MAX_HEAD (64 * 1024)   /* server.MAX_HEAD: a longer head is llhttp's to refuse */
#define MAX_FIELDS 100

static unsigned char is_tchar[256];     /* RFC 9110 5.6.2 token */
static unsigned char is_vchar[256];     /* field-value: VCHAR, obs-text, SP, HTAB */
static unsigned char is_target[256];    /* request-target: visible ASCII */

static PyObject *s_get, *s_head, *v10, *v11, *empty_tuple;

static void init_tables(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        is_tchar[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        is_vchar[c] = (c >= 0x21 && c <= 0x7e) || c >= 0x80 || c == ' ' || c == '\t';
        is_target[c] = c >= 0x21 && c <= 0x7e;
    }
    for (const char *p = extra; *p; p++)
        is_tchar[(unsigned char)*p] = 1;
}

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* Whether name[0:n] equals the lower-case `word`, ignoring ASCII case. */
static int name_is(const char *name, Py_ssize_t n, const char *word)
{
    Py_ssize_t i = 0;
    for (; i < n; i++)
        if (word[i] == '\0' || lower((unsigned char)name[i]) != word[i])
            return 0;
    return word[i] == '\0';
}

/* Whether name[0:n], lower-cased, is one of the bytes objects in `names` (a tuple). */
static int name_in(const char *name, Py_ssize_t n, PyObject *names)
{
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *item = PyTuple_GET_ITEM(names, k);
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) != n)
            continue;
        const char *word = PyBytes_AS_STRING(item);
        Py_ssize_t i = 0;
        while (i < n && lower((unsigned char)name[i]) == word[i])
            i++;
        if (i == n)
            return 1;
    }
    return 0;
}

/* One field line at buf[*at]: the name and the value without leading whitespace.
 * 1: a field; 0: the blank line that ends the head (*at past it); -1: not ours. */
static int field(const char *buf, Py_ssize_t len, Py_ssize_t *at,
                 const char **name, Py_ssize_t *name_len,
                 const char **value, Py_ssize_t *value_len)
{
    Py_ssize_t p = *at;
    if (p + 1 < len && buf[p] == '\r' && buf[p + 1] == '\n') {
        *at = p + 2;
        return 0;
    }
    Py_ssize_t start = p;
    while (p < len && is_tchar[(unsigned char)buf[p]])
        p++;
    if (p == start || p >= len || buf[p] != ':')
        return -1;                  /* no name, a space before the colon, obs-fold... */
    *name = buf + start;
    *name_len = p - start;
    p++;
    while (p < len && (buf[p] == ' ' || buf[p] == '\t'))
        p++;
    start = p;
    while (p < len && is_vchar[(unsigned char)buf[p]])
        p++;
    if (p + 1 >= len || buf[p] != '\r' || buf[p + 1] != '\n')
        return -1;                  /* a control character, a bare LF, or not all here */
    *value = buf + start;           /* trailing whitespace kept, as llhttp keeps it */
    *value_len = p - start;
    *at = p + 2;
    return 1;
}

/* Connection's value: 1 keep-alive, 2 close, 0 anything else (more tokens included). */
static int connection_kind(const char *value, Py_ssize_t n)
{
    if (name_is(value, n, "keep-alive"))
        return 1;
    if (name_is(value, n, "close"))
        return 2;
    return 0;
}

/* Append "name: value\r\n" at out (room was reserved by the caller). */
static char *put_line(char *out, const char *name, Py_ssize_t name_len,
                      const char *value, Py_ssize_t value_len)
{
    memcpy(out, name, name_len);
    out += name_len;
    *out++ = ':';
    *out++ = ' ';
    memcpy(out, value, value_len);
    out += value_len;
    *out++ = '\r';
    *out++ = '\n';
    return out;
}

/* (name, value) as bytes: Py_BuildValue parses its format string per call, and this
 * runs per field. */
static PyObject *pair_of(const char *name, Py_ssize_t name_len,
                         const char *value, Py_ssize_t value_len)
{
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL)
        return NULL;
    PyObject *n = PyBytes_FromStringAndSize(name, name_len);
    PyObject *v = n != NULL ? PyBytes_FromStringAndSize(value, value_len) : NULL;
    if (v == NULL) {
        Py_XDECREF(n);
        Py_DECREF(pair);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, n);
    PyTuple_SET_ITEM(pair, 1, v);
    return pair;
}

/* A tuple of the `n` objects in `items`, whose references it takes (NULL if one is
 * NULL: the others are released). */
static PyObject *tuple_of(Py_ssize_t n, PyObject **items)
{
    PyObject *tuple = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL)
            goto failed;
    tuple = PyTuple_New(n);
    if (tuple == NULL)
        goto failed;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(tuple, i, items[i]);
    return tuple;
failed:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

static PyObject *new_ref(PyObject *object)
{
    Py_INCREF(object);
    return object;
}

/* A bytes object of `size` bytes to fill; every line written into it is at most one
 * byte longer than its source line (the space after the colon), so the head's size
 * plus one per field is always room enough. */
static PyObject *lines_buffer(Py_ssize_t size)
{
    return PyBytes_FromStringAndSize(NULL, size + MAX_FIELDS + 2);
}

static PyObject *request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "request(data: bytes, flagged: tuple)");
        return NULL;
    }
    PyObject *data = args[0], *flagged = args[1];
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (len > MAX_HEAD || len < 18)
        Py_RETURN_NONE;
    PyObject *method;
    Py_ssize_t p;
    if (memcmp(buf, "GET ", 4) == 0) {
        method = s_get;
        p = 4;
    } else if (memcmp(buf, "HEAD ", 5) == 0) {
        method = s_head;
        p = 5;
    } else {
        Py_RETURN_NONE;
    }
    Py_ssize_t target_at = p;
    while (p < len && is_target[(unsigned char)buf[p]])
        p++;
    Py_ssize_t target_len = p - target_at;
    if (target_len == 0 || buf[target_at] != '/' || len - p < 11 || buf[p] != ' ')
        Py_RETURN_NONE;               /* absolute-form, "*", a control character... */
    p++;
    PyObject *version;
    if (memcmp(buf + p, "HTTP/1.1\r\n", 10) == 0)
        version = v11;
    else if (memcmp(buf + p, "HTTP/1.0\r\n", 10) == 0)
        version = v10;
    else
        Py_RETURN_NONE;
    p += 10;

    PyObject *fields = PyList_New(0), *lines = lines_buffer(len), *host = NULL;
    if (fields == NULL || lines == NULL)
        goto error;
    char *out_start = PyBytes_AS_STRING(lines), *out = out_start;
    char *out_end = out_start + PyBytes_GET_SIZE(lines);
    int hosts = 0, seen = 0, connection = -1, count = 0, got;
    const char *name, *value;
    Py_ssize_t name_len, value_len;
    while ((got = field(buf, len, &p, &name, &name_len, &value, &value_len)) == 1) {
        if (++count > MAX_FIELDS)
            goto not_ours;
        int is_host = 0, is_connection = 0;
        switch (lower((unsigned char)name[0])) {
        case 'h':
            is_host = name_is(name, name_len, "host");
            break;
        case 'c':
            if (name_is(name, name_len, "content-length"))
                goto not_ours;
            if (name_is(name, name_len, "connection")) {
                if (connection != -1)
                    goto not_ours;
                is_connection = 1;
                connection = connection_kind(value, value_len);
                if (connection == 0)
                    goto not_ours;
                if (connection == 2)
                    seen = 1;         /* Connection: keep-alive alone is no reason */
            }
            break;
        case 't':
            if (name_is(name, name_len, "transfer-encoding"))
                goto not_ours;
            break;
        case 'u':
            if (name_is(name, name_len, "upgrade"))
                goto not_ours;
            break;
        case 'p':
            if (name_is(name, name_len, "proxy-connection"))
                goto not_ours;        /* llhttp reads it as Connection */
            break;
        }
        if (!seen && !is_connection && name_in(name, name_len, flagged))
            seen = 1;
        PyObject *pair = pair_of(name, name_len, value, value_len);
        if (pair == NULL)
            goto error;
        int failed = PyList_Append(fields, pair);
        if (is_host && ++hosts == 1) {
            host = PyTuple_GET_ITEM(pair, 1);
            Py_INCREF(host);
        }
        Py_DECREF(pair);
        if (failed)
            goto error;
        if (!is_host) {
            if (out + name_len + value_len + 4 > out_end)
                goto not_ours;        /* cannot happen (lines_buffer); never overrun */
            out = put_line(out, name, name_len, value, value_len);
        }
    }
    if (got < 0 || p != len)
        goto not_ours;                /* not a whole head, or bytes after it */
    if (_PyBytes_Resize(&lines, out - out_start) < 0)
        goto error;
    int keep_alive = version == v11 ? connection != 2 : connection == 1;
    PyObject *target = PyBytes_FromStringAndSize(buf + target_at, target_len);
    if (target == NULL)
        goto error;
    PyObject *items[] = {new_ref(method), target, new_ref(version), fields,
                         new_ref(keep_alive ? Py_True : Py_False),
                         host != NULL ? host : new_ref(Py_None), PyLong_FromLong(hosts),
                         new_ref(seen ? Py_True : Py_False), lines};
    return tuple_of(9, items);

not_ours:
    Py_XDECREF(fields);
    Py_XDECREF(lines);
    Py_XDECREF(host);
    Py_RETURN_NONE;
error:
    Py_XDECREF(fields);
    Py_XDECREF(lines);
    Py_XDECREF(host);
    return NULL;
}

static PyObject *response(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1])
        || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "response(data: bytes, special: tuple, drop: tuple, head)");
        return NULL;
    }
    PyObject *data = args[0], *special = args[1], *drop = args[2];
    int head_request = PyObject_IsTrue(args[3]);
    if (head_request < 0)
        return NULL;
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (len < 14 || memcmp(buf, "HTTP/1.", 7) != 0 || (buf[7] != '1' && buf[7] != '0')
        || buf[8] != ' ')
        Py_RETURN_NONE;
    int v11_ = buf[7] == '1';
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            Py_RETURN_NONE;
        status = status * 10 + (buf[i] - '0');
    }
    if (status < 200 || status > 999)
        Py_RETURN_NONE;               /* interim responses and 101 are llhttp's */
    Py_ssize_t p = 12, reason_at, reason_len;
    if (buf[p] == ' ') {
        p++;
        reason_at = p;
        while (p < len && is_vchar[(unsigned char)buf[p]])
            p++;
        reason_len = p - reason_at;
    } else {
        reason_at = p;
        reason_len = 0;
    }
    if (p + 1 >= len || buf[p] != '\r' || buf[p + 1] != '\n')
        Py_RETURN_NONE;
    p += 2;

    /* Sized by the head alone: the body may follow in the same bytes. */
    Py_ssize_t head_max = len < MAX_HEAD ? len : MAX_HEAD;
    if (p > head_max)
        Py_RETURN_NONE;               /* a status line longer than a head may be */
    const char *blank = memmem(buf + p - 2, head_max - (p - 2), "\r\n\r\n", 4);
    if (blank == NULL)
        Py_RETURN_NONE;               /* not all here yet (or too long): llhttp's */
    head_max = blank + 4 - buf;
    PyObject *lines = lines_buffer(head_max), *statuses = NULL, *via = NULL;
    if (lines == NULL)
        return NULL;
    char *out_start = PyBytes_AS_STRING(lines), *out = out_start;
    char *out_end = out_start + PyBytes_GET_SIZE(lines);
    long long length = -1;
    int connection = -1, count = 0, dated = 0, named_close = 0, got;
    const char *name, *value;
    Py_ssize_t name_len, value_len;
    const char *vias[MAX_FIELDS], *marks[MAX_FIELDS];
    Py_ssize_t via_lens[MAX_FIELDS], mark_lens[MAX_FIELDS];
    int nvia = 0, nmarks = 0;
    while ((got = field(buf, head_max, &p, &name, &name_len, &value, &value_len)) == 1) {
        if (++count > MAX_FIELDS)
            goto not_ours;
        int c = lower((unsigned char)name[0]);
        if (c == 'c' && name_is(name, name_len, "content-length")) {
            if (length != -1 || value_len == 0 || value_len > 15)
                goto not_ours;
            length = 0;
            for (Py_ssize_t i = 0; i < value_len; i++) {
                if (value[i] < '0' || value[i] > '9')
                    goto not_ours;
                length = length * 10 + (value[i] - '0');
            }
        } else if (c == 'c' && name_is(name, name_len, "connection")) {
            if (connection != -1)
                goto not_ours;
            connection = connection_kind(value, value_len);
            if (connection == 0)
                goto not_ours;        /* it may name fields to drop: the general way */
        } else if (c == 't' && name_is(name, name_len, "transfer-encoding")) {
            goto not_ours;
        } else if (c == 'u' && name_is(name, name_len, "upgrade")) {
            goto not_ours;
        } else if (c == 'p' && name_is(name, name_len, "proxy-connection")) {
            goto not_ours;            /* llhttp reads it as Connection */
        } else if (c == 'c' && name_is(name, name_len, "close")) {
            named_close = 1;          /* what Connection: close would name */
        } else if (c == 'v' && name_is(name, name_len, "via")) {
            vias[nvia] = value;
            via_lens[nvia++] = value_len;
        } else if (c == 'c' && name_is(name, name_len, "cache-status")) {
            marks[nmarks] = value;
            mark_lens[nmarks++] = value_len;
        }
        if (name_in(name, name_len, special) || name_in(name, name_len, drop))
            continue;
        if (c == 'd' && name_is(name, name_len, "date"))
            dated = 1;
        if (out + name_len + value_len + 4 > out_end)
            goto not_ours;            /* cannot happen (lines_buffer); never overrun */
        out = put_line(out, name, name_len, value, value_len);
    }
    if (got < 0 || p != head_max || (connection == 2 && named_close))
        goto not_ours;
    int bodiless = head_request || status == 204 || status == 304;
    if (length == -1 && !bodiless)
        goto not_ours;                /* delimited by the close: the general way */
    if (_PyBytes_Resize(&lines, out - out_start) < 0)
        goto error;
    if (nvia) {
        Py_ssize_t size = 2 * (nvia - 1);
        for (int i = 0; i < nvia; i++)
            size += via_lens[i];
        via = PyBytes_FromStringAndSize(NULL, size);
        if (via == NULL)
            goto error;
        char *v = PyBytes_AS_STRING(via);
        for (int i = 0; i < nvia; i++) {
            if (i) {
                *v++ = ',';
                *v++ = ' ';
            }
            memcpy(v, vias[i], via_lens[i]);
            v += via_lens[i];
        }
    }
    if (nmarks) {
        statuses = PyTuple_New(nmarks);
        if (statuses == NULL)
            goto error;
        for (int i = 0; i < nmarks; i++) {
            PyObject *mark = PyBytes_FromStringAndSize(marks[i], mark_lens[i]);
            if (mark == NULL)
                goto error;
            PyTuple_SET_ITEM(statuses, i, mark);
        }
    } else {
        statuses = empty_tuple;
        Py_INCREF(statuses);
    }
    int keep_alive = v11_ ? connection != 2 : connection == 1;
    PyObject *reason = PyUnicode_DecodeLatin1(buf + reason_at, reason_len, NULL);
    if (reason == NULL)
        goto error;
    PyObject *length_obj;
    if (length == -1) {
        length_obj = Py_None;
        Py_INCREF(length_obj);
    } else {
        length_obj = PyLong_FromLongLong(length);
        if (length_obj == NULL) {
            Py_DECREF(reason);
            goto error;
        }
    }
    if (via == NULL) {
        via = Py_None;
        Py_INCREF(via);
    }
    PyObject *items[] = {PyLong_FromSsize_t(p), PyLong_FromLong(status), reason, length_obj,
                         new_ref(keep_alive ? Py_True : Py_False), lines,
                         new_ref(dated ? Py_True : Py_False), via, statuses};
    return tuple_of(9, items);

not_ours:
    Py_XDECREF(lines);
    Py_XDECREF(via);
    Py_XDECREF(statuses);
    Py_RETURN_NONE;
error:
    Py_XDECREF(lines);
    Py_XDECREF(via);
    Py_XDECREF(statuses);
    return NULL;
}

static PyMethodDef methods[] = {
    {"request", (PyCFunction)(void (*)(void))request, METH_FASTCALL,
     "request(data, flagged) -> (method, target, version, fields, keep_alive, host, hosts, "
     "flagged_seen, lines) for one whole plain GET/HEAD head, else None."},
    {"response", (PyCFunction)(void (*)(void))response, METH_FASTCALL,
     "response(data, special, drop, head) -> (head_size, status, reason, length, keep_alive, "
     "lines, dated, via, statuses) for a whole final head framed by Content-Length, "
     "else None."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "edge._heads",
    "HTTP/1.1 heads read in one call for the pass-through shortcut (see the source).",
    -1, methods
};

PyMODINIT_FUNC PyInit__heads(void)
{
    init_tables();
    s_get = PyBytes_FromString("GET");
    s_head = PyBytes_FromString("HEAD");
    v10 = PyUnicode_InternFromString("1.0");
    v11 = PyUnicode_InternFromString("1.1");
    empty_tuple = PyTuple_New(0);
    if (!s_get || !s_head || !v10 || !v11 || !empty_tuple)
        return NULL;
    return PyModule_Create(&module);
}
