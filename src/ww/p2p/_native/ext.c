/* ww.p2p._native._ext: conn.c (the libp2p connection in C) as a CPython extension, built by
 * setuptools with the package (setup.py) and linked with libsodium.  Design (e) in
 * docs/benchmarks.md; the host's lane (ww.p2p.lane) is built on it.
 *
 * Conn.start_handshake, then Conn.handshake_step as the asyncio loop's add_reader callback
 * until it returns the peer's key: the handshake (conn.c's state machine; nothing waits, the
 * caller sets the deadline).  Then Conn.readable is the add_reader callback: it reads,
 * decrypts and parses (conn.c), and hands a stream's bytes to the protocol attached to it
 * (asyncio's BufferedProtocol calls: get_buffer, buffer_updated, eof_received, as pycapnp's
 * _PyAsyncIoStreamProtocol takes them) from C; while conn.c pauses reading (its out buffer
 * over 512 KiB of answers the peer does not read) the reader is removed, and added again
 * once it is under 256 KiB (conn_watch).  One call parses at most PARSE_BUDGET (128) frames;
 * while input already read is left, the reader is removed too and one readable call is
 * scheduled with call_soon, so the loop turns between budgets and nothing waits for the
 * socket to say more.  Stream is the protocol's transport: write()
 * appends to the stream's queue and schedules one Conn.flush per loop turn, which frames,
 * encrypts and sends everything queued.  Its writer is flow-controlled as asyncio's
 * transports' are: told pause_writing once more than WRITE_HIGH (1 MiB) of what it wrote is
 * unsent (the peer's Yamux window paces it), resume_writing after a flush finds it down to
 * WRITE_LOW (256 KiB); one that goes on regardless loses its stream at WRITE_LIMIT (64 MiB
 * unsent: reset, the protocol told ConnectionResetError), never the connection.  Streams
 * not yet attached (the multistream-select
 * exchange), inbound SYNs and failures go to Python methods of the subclasses (on_data,
 * remote_closed, _unattached_lost, _new_stream, _fail).  A SYN past conn.c's bucket (64 at
 * once, 256 a second) or past max_inbound is reset in C: _new_stream never hears of it.
 *
 * Both types take part in the cyclic GC (a Conn holds its streams, a Stream its Conn and its
 * protocol, and the protocol its transport, the Stream): a connection dropped without
 * free(), or a stream whose protocol still holds it, is collected, its C memory with it.
 * The module also exports conn.c's C functions (ww_conn_*), which benchmarks/p2p_native.py
 * drives through ctypes for comparison.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "conn.c"

typedef struct ConnObject ConnObject;

/* A stream's writer (its protocol) is told to wait (asyncio's pause_writing) once more than
 * WRITE_HIGH bytes it wrote are unsent (queued this turn, or in conn.c waiting for the
 * peer's window or for room in the out buffer), and to go on (resume_writing) once they are
 * down to WRITE_LOW: the peer's Yamux window paces the writer, nothing fails.  A writer that
 * does not wait may leave at most WRITE_LIMIT unsent on the stream: a write past it resets
 * that stream (its protocol told, ConnectionResetError), never the connection. */
#define WRITE_HIGH (1u << 20)
#define WRITE_LOW (256u << 10)
#define WRITE_LIMIT BUF_LIMIT

typedef struct {
    PyObject_HEAD
    ConnObject *conn;
    uint32_t sid;
    PyObject *protocol; /* NULL until attached */
    buf_t inbox, out; /* inbox: what came that the protocol has not taken (<= the window) */
    size_t inbox_off, neg_in; /* neg_in: bytes given to on_data, before a protocol */
    size_t high, low; /* the writer's marks (set_write_buffer_limits) */
    int out_flags, dirty, reading, closed, eof, eof_given;
    int write_paused; /* the protocol was told pause_writing, not yet resume_writing */
    int overflow;     /* written past WRITE_LIMIT: reset, what it writes now is dropped */
} StreamObject;

struct ConnObject {
    PyObject_HEAD
    conn_t *c;
    int fd;
    PyObject *loop, *streams, *dirty; /* loop; dict sid -> Stream; list of Streams */
    PyObject *paused; /* list of Streams whose writer was told pause_writing */
    int scheduled, writing;
    int reader_off; /* the socket's reader removed: reading paused (conn.c), or input already
                     * read waits for the continuation (conn_watch) */
    int continuing; /* a readable call is scheduled (call_soon) for the input left */
    int started;    /* readable was called: the handshake's reader is gone */
    int ended;      /* its end was told (_fail, which takes it off the loop): nothing adds a
                     * reader or a writer for its fd again */
    char lane; /* the handshake agreed on /ww/lane/0.1.0 */
};

static PyTypeObject StreamType, ConnType;
static void conn_schedule(ConnObject *c);

/* ---- calls into Python ---- */

static void report(void) { /* an exception in a callback: shown, the connection goes on */
    if (PyErr_Occurred()) PyErr_WriteUnraisable(NULL);
}

static void call_method(PyObject *o, const char *name, PyObject *arg) {
    PyObject *r = arg ? PyObject_CallMethod(o, name, "O", arg) : PyObject_CallMethod(o, name, NULL);
    if (!r) report();
    Py_XDECREF(r);
}

/* loop.call_soon(o.name): 0, or -1 with an exception */
static int call_soon_method(PyObject *loop, PyObject *o, const char *name) {
    if (!loop) return 0;
    PyObject *cb = PyObject_GetAttrString(o, name);
    if (!cb) return -1;
    PyObject *r = PyObject_CallMethod(loop, "call_soon", "O", cb);
    Py_DECREF(cb);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static void conn_fail(ConnObject *self, const char *why) {
    self->ended = 1;
    PyObject *s = PyUnicode_FromString(why);
    if (!s) { report(); return; }
    call_method((PyObject *)self, "_fail", s);
    Py_DECREF(s);
}

/* ---- Stream ---- */

/* Yamux credit for n bytes the stream's reader took (conn.c sends it at half the window):
 * the peer may send only what the protocol has taken, so a paused stream holds at most its
 * window and the peer waits.  (conn.c counts at most what came and was not credited.) */
static void credit(ConnObject *c, uint32_t sid, size_t n) {
    if (n && c && c->c && ww_stream_credit(c->c, sid, n) == 1) conn_schedule(c);
}

/* The stream is gone for its protocol: connection_lost(exc) (None: an orderly end, or the
 * peer's reset). */
static void stream_lost_exc(StreamObject *s, PyObject *exc) {
    if (s->closed) return;
    s->closed = 1;
    /* what it held will never be read: credited, so the peer can finish (what comes from here
     * on is dropped, and credited as it comes) */
    credit(s->conn, s->sid, s->inbox.len - s->inbox_off + s->neg_in);
    Py_INCREF(s);
    if (s->conn && s->conn->streams) {
        PyObject *key = PyLong_FromUnsignedLong(s->sid);
        if (key && PyDict_GetItem(s->conn->streams, key) == (PyObject *)s)
            PyDict_DelItem(s->conn->streams, key);
        Py_XDECREF(key);
        PyErr_Clear();
    }
    if (s->protocol) {
        PyObject *p = s->protocol;
        Py_INCREF(p);
        call_method(p, "connection_lost", exc);
        Py_DECREF(p);
    } else {
        call_method((PyObject *)s, "_unattached_lost", NULL);
    }
    Py_DECREF(s);
}

static void stream_lost(StreamObject *s) { stream_lost_exc(s, Py_None); }

/* Copy n bytes into the protocol's buffers while it reads; returns the bytes taken. */
static size_t hand_over(StreamObject *s, const uint8_t *p, size_t n) {
    PyObject *proto = s->protocol;
    size_t done = 0;
    if (!proto) return 0;
    Py_INCREF(proto);
    while (done < n && s->reading && !s->closed) {
        PyObject *b = PyObject_CallMethod(proto, "get_buffer", "n", (Py_ssize_t)(n - done));
        if (!b) { report(); break; }
        Py_buffer view;
        if (PyObject_GetBuffer(b, &view, PyBUF_WRITABLE | PyBUF_SIMPLE)) {
            Py_DECREF(b);
            report();
            break;
        }
        size_t k = (size_t)view.len < n - done ? (size_t)view.len : n - done;
        memcpy(view.buf, p + done, k);
        PyBuffer_Release(&view);
        Py_DECREF(b);
        done += k;
        PyObject *r = PyObject_CallMethod(proto, "buffer_updated", "n", (Py_ssize_t)k);
        if (!r) report();
        Py_XDECREF(r);
        if (!k) break;
    }
    Py_DECREF(proto);
    return done;
}

static void deliver(StreamObject *s) {
    if (!s->protocol) return;
    Py_INCREF(s);
    if (s->inbox.len > s->inbox_off) {
        size_t k = hand_over(s, s->inbox.p + s->inbox_off, s->inbox.len - s->inbox_off);
        s->inbox_off += k;
        credit(s->conn, s->sid, k);
        if (s->inbox_off == s->inbox.len) s->inbox.len = s->inbox_off = 0;
    }
    if (s->reading && s->inbox.len == s->inbox_off && s->eof && !s->eof_given && !s->closed) {
        s->eof_given = 1;
        call_method(s->protocol, "eof_received", NULL);
    }
    Py_DECREF(s);
}

static void stream_data(StreamObject *s, const uint8_t *p, size_t n) {
    if (!s->protocol) { /* credited at attach, less what it hands over still unread */
        s->neg_in += n;
        PyObject *b = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
        if (!b) { report(); return; }
        call_method((PyObject *)s, "on_data", b);
        Py_DECREF(b);
        return;
    }
    if (s->inbox.len == s->inbox_off) {
        size_t k = hand_over(s, p, n);
        credit(s->conn, s->sid, k);
        p += k;
        n -= k;
    }
    if (!n) return;
    if (s->closed) { /* dropped: not held, so credited */
        credit(s->conn, s->sid, n);
        return;
    }
    if (buf_put(&s->inbox, p, n)) { /* (the window bounds it; the buffer limit is 64 MiB) */
        PyObject *r = PyObject_CallMethod((PyObject *)s, "reset", NULL);
        if (!r) report();
        Py_XDECREF(r);
    }
}

/* Bytes written on the stream and not framed yet: queued this turn, or in conn.c. */
static size_t unsent(StreamObject *s) {
    size_t n = s->out.len;
    if (s->conn && s->conn->c) n += ww_stream_unsent(s->conn->c, s->sid);
    return n;
}

static int mark_dirty(StreamObject *s) {
    if (!s->dirty) {
        if (PyList_Append(s->conn->dirty, (PyObject *)s)) return -1;
        s->dirty = 1;
    }
    conn_schedule(s->conn);
    return 0;
}

/* The protocol is told to wait (as asyncio's transports do, from inside write()). */
static void pause_writer(StreamObject *s) {
    if (s->write_paused || !s->protocol || s->closed || s->overflow || !s->conn ||
        !s->conn->paused)
        return;
    if (PyList_Append(s->conn->paused, (PyObject *)s)) { report(); return; }
    s->write_paused = 1;
    PyObject *p = s->protocol;
    Py_INCREF(p);
    call_method(p, "pause_writing", NULL);
    Py_DECREF(p);
}

/* Written past WRITE_LIMIT (its writer did not wait): the stream is reset and what it
 * queued dropped; its protocol is told on the next loop turn (Stream._overflowed), not from
 * inside its own write.  The connection and its other streams go on. */
static int overflow(StreamObject *s) {
    s->overflow = 1;
    s->out.len = 0;
    buf_shrink(&s->out);
    s->out_flags = F_RST;
    if (mark_dirty(s)) return -1;
    return call_soon_method(s->conn->loop, (PyObject *)s, "_overflowed");
}

static int queue(StreamObject *s, const void *p, size_t n, int flags) {
    if (!s->conn || !s->conn->c || !s->conn->dirty) return 0;
    if (s->overflow) return 0; /* reset: its bytes go nowhere */
    size_t held = unsent(s);
    if (n > WRITE_LIMIT - (held < WRITE_LIMIT ? held : WRITE_LIMIT) || buf_put(&s->out, p, n))
        return overflow(s);
    s->out_flags |= flags;
    if (mark_dirty(s)) return -1;
    if (n && held + n > s->high) pause_writer(s);
    return 0;
}

/* The writers told to wait whose unsent bytes are down to their low mark are told to go
 * on (resume_writing); the others wait on.  After every flush (a window update, or room in
 * the out buffer, is what lets bytes go). */
static void conn_resume(ConnObject *self) {
    if (!self->paused || !PyList_GET_SIZE(self->paused)) return;
    PyObject *was = self->paused;
    self->paused = PyList_New(0);
    if (!self->paused) { self->paused = was; report(); return; }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(was); i++) {
        StreamObject *s = (StreamObject *)PyList_GET_ITEM(was, i);
        if (!s->write_paused) continue;
        if (!s->closed && s->protocol && unsent(s) > s->low) {
            if (self->paused && PyList_Append(self->paused, (PyObject *)s)) report();
            continue;
        }
        s->write_paused = 0;
        if (s->closed || s->overflow || !s->protocol) continue; /* reset: never resumed */
        PyObject *p = s->protocol;
        Py_INCREF(p);
        call_method(p, "resume_writing", NULL); /* may write, and be told to wait again */
        Py_DECREF(p);
    }
    Py_DECREF(was);
}

static int Stream_init(StreamObject *self, PyObject *args, PyObject *kw) {
    PyObject *conn;
    unsigned long sid;
    (void)kw;
    if (!PyArg_ParseTuple(args, "O!k", &ConnType, &conn, &sid)) return -1;
    Py_INCREF(conn);
    Py_XSETREF(self->conn, (ConnObject *)conn);
    self->sid = (uint32_t)sid;
    self->high = WRITE_HIGH;
    self->low = WRITE_LOW;
    return 0;
}

static int Stream_traverse(StreamObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->conn);
    Py_VISIT(self->protocol);
    return 0;
}

static int Stream_clear(StreamObject *self) {
    Py_CLEAR(self->conn);
    Py_CLEAR(self->protocol);
    return 0;
}

static void Stream_dealloc(StreamObject *self) {
    PyObject_GC_UnTrack(self);
    Stream_clear(self);
    free(self->inbox.p);
    free(self->out.p);
    self->inbox.p = self->out.p = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Stream_write(StreamObject *self, PyObject *data) {
    Py_buffer view;
    if (self->closed) Py_RETURN_NONE;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)) return NULL;
    int rc = queue(self, view.buf, (size_t)view.len, 0);
    PyBuffer_Release(&view);
    if (rc) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Stream_writelines(StreamObject *self, PyObject *chunks) {
    PyObject *it = PyObject_GetIter(chunks), *item;
    if (!it) return NULL;
    while ((item = PyIter_Next(it))) {
        PyObject *r = Stream_write(self, item);
        Py_DECREF(item);
        if (!r) { Py_DECREF(it); return NULL; }
        Py_DECREF(r);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Stream_write_eof(StreamObject *self, PyObject *unused) {
    (void)unused;
    if (!self->closed && queue(self, NULL, 0, F_FIN)) return NULL;
    Py_RETURN_NONE;
}

/* FIN or RST after what is queued; the stream is gone for its protocol. */
static PyObject *stream_end(StreamObject *self, int flag) {
    if (self->closed) {
        /* closed with a FIN still behind unsent bytes (the peer gives no window): a reset
         * drops them, and the stream */
        if (flag == F_RST && self->conn && self->conn->c &&
            (self->out.len || ww_stream_unsent(self->conn->c, self->sid)) &&
            queue(self, NULL, 0, F_RST))
            return NULL;
        Py_RETURN_NONE;
    }
    if (queue(self, NULL, 0, flag)) return NULL;
    stream_lost(self);
    Py_RETURN_NONE;
}

static PyObject *Stream_close(StreamObject *self, PyObject *unused) {
    (void)unused;
    return stream_end(self, F_FIN);
}

static PyObject *Stream_reset(StreamObject *self, PyObject *unused) {
    (void)unused;
    return stream_end(self, F_RST);
}

static PyObject *Stream_lost(StreamObject *self, PyObject *unused) {
    (void)unused;
    stream_lost(self);
    Py_RETURN_NONE;
}

static PyObject *Stream_pause_reading(StreamObject *self, PyObject *unused) {
    (void)unused;
    self->reading = 0;
    Py_RETURN_NONE;
}

static PyObject *Stream_resume_reading(StreamObject *self, PyObject *unused) {
    (void)unused;
    self->reading = 1;
    deliver(self);
    Py_RETURN_NONE;
}

/* asyncio's transport call: bytes written and not handed to the socket yet, those not
 * framed yet (queued this loop turn, waiting for the peer's Yamux send window, or for room
 * in the connection's out buffer). */
static PyObject *Stream_get_write_buffer_size(StreamObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(unsent(self));
}

/* asyncio's transport calls: the marks at which the writer is told to wait (over high)
 * and to go on (down to low). */
static PyObject *Stream_get_write_buffer_limits(StreamObject *self, PyObject *unused) {
    (void)unused;
    return Py_BuildValue("nn", (Py_ssize_t)self->low, (Py_ssize_t)self->high);
}

static PyObject *Stream_set_write_buffer_limits(StreamObject *self, PyObject *args,
                                                PyObject *kw) {
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *ho = Py_None, *lo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", kwlist, &ho, &lo)) return NULL;
    Py_ssize_t high = -1, low = -1;
    if (ho != Py_None && (high = PyLong_AsSsize_t(ho)) == -1 && PyErr_Occurred()) return NULL;
    if (lo != Py_None && (low = PyLong_AsSsize_t(lo)) == -1 && PyErr_Occurred()) return NULL;
    if (ho == Py_None) high = lo == Py_None ? (Py_ssize_t)WRITE_HIGH : 4 * low;
    if (lo == Py_None) low = high / 4;
    if (!(high >= low && low >= 0)) {
        PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", high,
                     low);
        return NULL;
    }
    self->high = (size_t)high;
    self->low = (size_t)low;
    if (unsent(self) > self->high) pause_writer(self);
    Py_RETURN_NONE;
}

/* Written past WRITE_LIMIT (overflow): reset already; the protocol is told now. */
static PyObject *Stream_overflowed(StreamObject *self, PyObject *unused) {
    (void)unused;
    if (self->closed) Py_RETURN_NONE;
    PyObject *exc = PyObject_CallFunction(
        PyExc_ConnectionResetError, "s",
        "stream reset: more than 64 MiB written that the peer had not taken (the writer did "
        "not wait)");
    if (!exc) return NULL;
    stream_lost_exc(self, exc);
    Py_DECREF(exc);
    Py_RETURN_NONE;
}

static PyObject *Stream_true(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    Py_RETURN_TRUE;
}

static PyObject *Stream_is_closing(StreamObject *self, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(self->closed);
}

static PyObject *Stream_get_extra_info(PyObject *self, PyObject *args) {
    PyObject *name, *dflt = Py_None;
    (void)self;
    if (!PyArg_ParseTuple(args, "O|O", &name, &dflt)) return NULL;
    Py_INCREF(dflt);
    return dflt;
}

/* attach(protocol, leftover, eof): the protocol reads from here on; leftover: bytes that
 * came with the negotiation; eof: the peer closed its side already. */
static PyObject *Stream_attach(StreamObject *self, PyObject *args) {
    PyObject *protocol;
    Py_buffer left;
    int eof;
    if (!PyArg_ParseTuple(args, "Oy*p", &protocol, &left, &eof)) return NULL;
    size_t held = (size_t)left.len;
    int rc = buf_put(&self->inbox, left.buf, held);
    PyBuffer_Release(&left);
    if (rc) return PyErr_NoMemory();
    /* what the negotiation used is taken; what it hands over is credited as it is read */
    credit(self->conn, self->sid, self->neg_in > held ? self->neg_in - held : 0);
    self->neg_in = 0;
    Py_INCREF(protocol);
    Py_XSETREF(self->protocol, protocol);
    self->reading = 1; /* before connection_made, which may pause it */
    self->eof = self->eof || eof;
    PyObject *r = PyObject_CallMethod(protocol, "connection_made", "O", (PyObject *)self);
    if (!r) return NULL;
    Py_DECREF(r);
    deliver(self);
    Py_RETURN_NONE;
}

static PyMethodDef Stream_methods[] = {
    {"write", (PyCFunction)Stream_write, METH_O, "queue bytes; sent at the loop turn's flush"},
    {"writelines", (PyCFunction)Stream_writelines, METH_O, NULL},
    {"write_eof", (PyCFunction)Stream_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)Stream_true, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)Stream_is_closing, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)Stream_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)Stream_resume_reading, METH_NOARGS, NULL},
    {"get_extra_info", (PyCFunction)Stream_get_extra_info, METH_VARARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)Stream_get_write_buffer_size, METH_NOARGS,
     "bytes written and not yet framed (this turn's, or waiting for window or for room)"},
    {"get_write_buffer_limits", (PyCFunction)Stream_get_write_buffer_limits, METH_NOARGS,
     "(low, high): the protocol is told pause_writing over high, resume_writing at low"},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))Stream_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, "(high=None, low=None), as asyncio's"},
    {"_overflowed", (PyCFunction)Stream_overflowed, METH_NOARGS,
     "written past the limit: the protocol is told it is reset"},
    {"attach", (PyCFunction)Stream_attach, METH_VARARGS, NULL},
    {"close", (PyCFunction)Stream_close, METH_NOARGS, "FIN, and the protocol is told"},
    {"reset", (PyCFunction)Stream_reset, METH_NOARGS, "RST, and the protocol is told"},
    {"abort", (PyCFunction)Stream_reset, METH_NOARGS, NULL},
    {"_lost", (PyCFunction)Stream_lost, METH_NOARGS, "gone: the protocol is told"},
    {NULL, NULL, 0, NULL}};

static PyObject *Stream_get_held(StreamObject *self, void *unused) {
    (void)unused;
    return PyLong_FromSize_t(self->inbox.len - self->inbox_off);
}

static PyObject *Stream_get_writing_paused(StreamObject *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(self->write_paused);
}

static PyGetSetDef Stream_getset[] = {
    {"writing_paused", (getter)Stream_get_writing_paused, NULL,
     "the protocol was told pause_writing and not yet resume_writing", NULL},
    {"held", (getter)Stream_get_held, NULL,
     "bytes that came that the protocol has not taken yet (at most the 256 KiB window)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Stream_members[] = {
    {"sid", T_UINT, offsetof(StreamObject, sid), READONLY, NULL},

    {"conn", T_OBJECT, offsetof(StreamObject, conn), READONLY, NULL},
    {"protocol", T_OBJECT, offsetof(StreamObject, protocol), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyTypeObject StreamType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ww.p2p._native._ext.Stream",
    .tp_basicsize = sizeof(StreamObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Stream_traverse,
    .tp_clear = (inquiry)Stream_clear,
    .tp_free = PyObject_GC_Del,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Stream_init,
    .tp_dealloc = (destructor)Stream_dealloc,
    .tp_methods = Stream_methods,
    .tp_members = Stream_members,
    .tp_getset = Stream_getset,
};

/* ---- Conn ---- */

static void conn_schedule(ConnObject *self) {
    if (self->scheduled || !self->loop) return;
    PyObject *cb = PyObject_GetAttrString((PyObject *)self, "flush");
    PyObject *r = cb ? PyObject_CallMethod(self->loop, "call_soon", "O", cb) : NULL;
    Py_XDECREF(cb);
    if (!r) { report(); return; }
    Py_DECREF(r);
    self->scheduled = 1;
}

static int Conn_init(ConnObject *self, PyObject *args, PyObject *kw) {
    int fd, initiator;
    PyObject *loop;
    (void)kw;
    if (!PyArg_ParseTuple(args, "ipO", &fd, &initiator, &loop)) return -1;
    if (self->c) { PyErr_SetString(PyExc_RuntimeError, "initialised twice"); return -1; }
    self->c = ww_conn_new(fd, initiator);
    if (!self->c) { PyErr_NoMemory(); return -1; }
    self->c->app_credit = 1; /* credit for what the streams' protocols take (credit()) */
    self->fd = fd;
    Py_INCREF(loop);
    Py_XSETREF(self->loop, loop);
    Py_XSETREF(self->streams, PyDict_New());
    Py_XSETREF(self->dirty, PyList_New(0));
    Py_XSETREF(self->paused, PyList_New(0));
    if (!self->streams || !self->dirty || !self->paused) return -1;
    return 0;
}

static void conn_free(ConnObject *self) {
    if (self->c) ww_conn_free(self->c);
    self->c = NULL;
    Py_CLEAR(self->streams); /* (breaks conn -> stream -> conn) */
    Py_CLEAR(self->dirty);
    Py_CLEAR(self->paused);
}

static int Conn_traverse(ConnObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->loop);
    Py_VISIT(self->streams);
    Py_VISIT(self->dirty);
    Py_VISIT(self->paused);
    return 0;
}

/* Breaks the cycles, and frees the C connection with them: every method takes a NULL
 * self->c as closed, so one called after the collector cleared the object (its streams and
 * dirty list gone) finds nothing to use rather than NULLs. */
static int Conn_clear(ConnObject *self) {
    conn_free(self);
    Py_CLEAR(self->loop);
    return 0;
}

static void Conn_dealloc(ConnObject *self) {
    PyObject_GC_UnTrack(self);
    conn_free(self);
    Py_CLEAR(self->loop);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Conn_free(ConnObject *self, PyObject *unused) {
    (void)unused;
    conn_free(self);
    Py_RETURN_NONE;
}

static PyObject *closed_error(void) {
    PyErr_SetString(PyExc_ConnectionError, "connection closed");
    return NULL;
}

static PyObject *Conn_flush(ConnObject *self, PyObject *unused);

static PyObject *conn_error(ConnObject *self) {
    PyErr_SetString(PyExc_ConnectionError, ww_conn_error(self->c));
    return NULL;
}

/* start_handshake(seed, expect or None, lane=False, other_keys=False): our Ed25519 seed,
 * the dialed peer's Ed25519 key; lane: a dialer proposes /ww/lane/0.1.0 first (header and
 * proposal in one send) and falls back to /noise on `na`, a listener accepts it as well as
 * /noise; other_keys (a listener): an RSA or secp256k1 peer is taken with its signature
 * unchecked, for the caller to check (other_identity) before anything else.  The dialer's
 * first bytes are sent (or queued, with a writer). */
static PyObject *Conn_start_handshake(ConnObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"seed", "expect", "lane", "other_keys", NULL};
    Py_buffer seed, expect = {0};
    PyObject *e;
    int lane = 0, other_keys = 0;
    if (!self->c) return closed_error();
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*O|pp", kwlist, &seed, &e, &lane,
                                     &other_keys))
        return NULL;
    if (other_keys) ww_conn_accept_other_keys(self->c);
    if (e != Py_None && PyObject_GetBuffer(e, &expect, PyBUF_SIMPLE)) {
        PyBuffer_Release(&seed);
        return NULL;
    }
    int bad = seed.len != 32 || (expect.buf && expect.len != 32);
    int rc = bad ? 0 : ww_conn_handshake_start(self->c, seed.buf, expect.buf, lane);
    PyBuffer_Release(&seed);
    if (expect.buf) PyBuffer_Release(&expect);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "keys are 32 bytes");
        return NULL;
    }
    if (rc) return conn_error(self);
    return Conn_flush(self, NULL);
}

/* handshake_step(): the add_reader callback while the handshake runs (never waits): None
 * while it goes on, the peer's Ed25519 key once done; ConnectionError when it failed. */
static PyObject *Conn_handshake_step(ConnObject *self, PyObject *unused) {
    (void)unused;
    if (!self->c) return closed_error();
    int rc = ww_conn_handshake_step(self->c);
    self->lane = (char)ww_conn_lane(self->c);
    if (rc < 0) return conn_error(self);
    PyObject *r = Conn_flush(self, NULL);
    if (!r) return NULL;
    Py_DECREF(r);
    if (self->c && ww_conn_error(self->c)[0]) return conn_error(self); /* the flush failed */
    if (!rc) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)ww_conn_remote_key(self->c), 32);
}

/* other_identity(): None for an Ed25519 peer (checked by the handshake), else (the peer's
 * PublicKey message, its signature, the Noise static key it signed) for the caller to
 * check: a listener's peer taken with other_keys. */
static PyObject *Conn_other_identity(ConnObject *self, PyObject *unused) {
    (void)unused;
    const uint8_t *key, *sig, *rs;
    size_t keyn, sign;
    if (!self->c) return closed_error();
    if (!ww_conn_other_identity(self->c, &key, &keyn, &sig, &sign, &rs)) Py_RETURN_NONE;
    return Py_BuildValue("(y#y#y#)", (const char *)key, (Py_ssize_t)keyn, (const char *)sig,
                         (Py_ssize_t)sign, (const char *)rs, (Py_ssize_t)32);
}


/* The add_reader callback, and its continuation: one call parses at most conn.c's
 * PARSE_BUDGET frames; what is left is parsed by another call scheduled with call_soon
 * (conn_watch), so the loop turns in between. */
static PyObject *Conn_readable(ConnObject *self, PyObject *unused) {
    (void)unused;
    self->continuing = 0;
    self->started = 1;
    if (!self->c) Py_RETURN_NONE;
    long n = ww_conn_read(self->c);
    if (n < 0) {
        conn_fail(self, n == -1 ? ww_conn_error(self->c) : "");
        Py_RETURN_NONE;
    }
    Py_INCREF(self);
    const uint8_t *ev = ww_conn_events(self->c);
    for (long off = 0; off + 12 <= n && self->c;) {
        uint32_t sid, len;
        uint16_t flags, kind;
        memcpy(&sid, ev + off, 4);
        memcpy(&flags, ev + off + 4, 2);
        memcpy(&kind, ev + off + 6, 2);
        memcpy(&len, ev + off + 8, 4);
        const uint8_t *data = ev + off + 12;
        off += 12 + (long)len;
        if (kind == EV_GOAWAY) continue;
        PyObject *key = PyLong_FromUnsignedLong(sid);
        if (!key) { report(); break; }
        StreamObject *s = (StreamObject *)PyDict_GetItem(self->streams, key);
        Py_XINCREF(s);
        if (!s && flags & F_SYN)
            s = (StreamObject *)PyObject_CallMethod((PyObject *)self, "_new_stream", "O", key);
        Py_DECREF(key);
        if (!s) { /* a stream Python let go of: its bytes dropped, so credited */
            report();
            credit(self, sid, len);
            continue;
        }
        if (!PyObject_TypeCheck((PyObject *)s, &StreamType)) { Py_DECREF(s); continue; }
        if (len) stream_data(s, data, len);
        if (flags & (F_FIN | F_RST) && !s->closed) {
            if (!s->protocol) {
                PyObject *r = PyObject_CallMethod((PyObject *)s, "remote_closed", "O",
                                                  flags & F_RST ? Py_True : Py_False);
                if (!r) report();
                Py_XDECREF(r);
            } else if (flags & F_RST) {
                s->eof = 1;
                stream_lost(s);
            } else {
                s->eof = 1;
                deliver(s);
            }
        }
        Py_DECREF(s);
    }
    PyObject *r = Conn_flush(self, NULL);
    Py_DECREF(self);
    return r;
}

static PyObject *Conn_writable(ConnObject *self, PyObject *unused);

static int call_soon_readable(ConnObject *self) {
    return call_soon_method(self->loop, (PyObject *)self, "readable");
}

/* The socket's reader (`readable`), removed while it has nothing to do:
 * - conn.c pauses reading while its out buffer is over its high-water mark (what the peer
 *   made it answer, unsent because the peer does not read), so the peer's frames wait in
 *   the kernel and in the peer, until the buffer is under its low-water mark;
 * - one readable call parses at most PARSE_BUDGET frames: while input already read is
 *   left (ww_conn_more), one readable call is scheduled with call_soon (it goes on in
 *   order, whether or not the socket has more), and the reader waits, so a connection
 *   takes one budget per loop turn.
 * Only once readable was first called (the handshake has a reader of its own), and never
 * once the end was told (_fail took the fd off the loop: a reader added again would spin on
 * a socket at its end, and outlive the socket's close on an fd the next socket gets).  0, or
 * -1 with an exception. */
static int conn_watch(ConnObject *self) {
    if (!self->c || self->c->failed || self->ended || !self->loop || !self->started) return 0;
    int paused = ww_conn_read_paused(self->c);
    int more = !paused && ww_conn_more(self->c);
    if (more && !self->continuing) {
        if (call_soon_readable(self)) return -1;
        self->continuing = 1;
    }
    int off = paused || more;
    if (off == self->reader_off) return 0;
    PyObject *r;
    if (off) {
        r = PyObject_CallMethod(self->loop, "remove_reader", "i", self->fd);
    } else {
        PyObject *cb = PyObject_GetAttrString((PyObject *)self, "readable");
        if (!cb) return -1;
        r = PyObject_CallMethod(self->loop, "add_reader", "iO", self->fd, cb);
        Py_DECREF(cb);
    }
    if (!r) return -1;
    Py_DECREF(r);
    self->reader_off = off;
    return 0;
}

/* Frames and encrypts what the streams queued, sends what the socket takes. */
static PyObject *Conn_flush(ConnObject *self, PyObject *unused) {
    (void)unused;
    self->scheduled = 0;
    if (!self->c) Py_RETURN_NONE;
    Py_ssize_t k = PyList_GET_SIZE(self->dirty);
    if (k) {
        PyObject *dirty = self->dirty;
        self->dirty = PyList_New(0);
        if (!self->dirty) { self->dirty = dirty; return NULL; }
        for (Py_ssize_t i = 0; i < k; i++) {
            StreamObject *s = (StreamObject *)PyList_GET_ITEM(dirty, i);
            int rc = ww_stream_write(self->c, s->sid, s->out.p, s->out.len, s->out_flags);
            s->out.len = 0;
            buf_shrink(&s->out);
            s->out_flags = 0;
            s->dirty = 0;
            if (rc == -1) { /* (-2: a stream the peer reset; its bytes dropped) */
                Py_DECREF(dirty);
                conn_fail(self, ww_conn_error(self->c));
                Py_RETURN_NONE;
            }
            if (rc == -3 && !s->overflow) { /* past conn.c's buffer: that stream reset */
                s->overflow = 1;
                if (call_soon_method(self->loop, (PyObject *)s, "_overflowed")) report();
            }
        }
        Py_DECREF(dirty);
    }
    long left = ww_conn_flush(self->c);
    if (left < 0) {
        conn_fail(self, ww_conn_error(self->c));
    } else if (left && !self->writing && !self->ended) {
        PyObject *cb = PyObject_GetAttrString((PyObject *)self, "writable");
        if (!cb) return NULL;
        PyObject *r = PyObject_CallMethod(self->loop, "add_writer", "iO", self->fd, cb);
        Py_DECREF(cb);
        if (!r) return NULL;
        Py_DECREF(r);
        self->writing = 1;
    }
    if (conn_watch(self)) return NULL;
    if (left >= 0) conn_resume(self);
    Py_RETURN_NONE;
}

static PyObject *Conn_writable(ConnObject *self, PyObject *unused) {
    (void)unused;
    long left = self->c ? ww_conn_flush(self->c) : 0;
    if (left <= 0 && self->writing && self->loop) {
        self->writing = 0;
        PyObject *r = PyObject_CallMethod(self->loop, "remove_writer", "i", self->fd);
        if (!r) return NULL;
        Py_DECREF(r);
    }
    if (left < 0) conn_fail(self, ww_conn_error(self->c));
    if (conn_watch(self)) return NULL;
    if (left >= 0) conn_resume(self);
    Py_RETURN_NONE;
}

static PyObject *Conn_open(ConnObject *self, PyObject *unused) {
    (void)unused;
    if (!self->c) return closed_error();
    uint32_t sid = ww_stream_open(self->c);
    if (!sid) {
        PyErr_SetString(PyExc_ConnectionError, "cannot open a stream");
        return NULL;
    }
    conn_schedule(self);
    return PyLong_FromUnsignedLong(sid);
}

/* The connection's encrypted bytes the socket has not taken yet. */
static PyObject *Conn_get_write_buffer_size(ConnObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(self->c ? ww_conn_unsent(self->c) : 0);
}

/* ping(opaque=0): a Yamux ping (the peer's answer is taken by readable, not reported). */
static PyObject *Conn_ping(ConnObject *self, PyObject *args) {
    unsigned int opaque = 0;
    if (!PyArg_ParseTuple(args, "|I", &opaque)) return NULL;
    if (!self->c) return closed_error();
    if (ww_conn_ping(self->c, opaque)) return conn_error(self);
    conn_schedule(self);
    Py_RETURN_NONE;
}

static PyObject *Conn_get_open_streams(ConnObject *self, void *unused) {
    (void)unused;
    return PyLong_FromLong(self->c ? self->c->nstreams : 0);
}

static PyObject *Conn_get_max_inbound(ConnObject *self, void *unused) {
    (void)unused;
    return PyLong_FromLong(self->c ? self->c->max_inbound : 0);
}

static int Conn_set_max_inbound(ConnObject *self, PyObject *value, void *unused) {
    (void)unused;
    long n = value ? PyLong_AsLong(value) : -1;
    if (n == -1 && PyErr_Occurred()) return -1;
    if (n < 0 || n > MAX_STREAMS) {
        PyErr_SetString(PyExc_ValueError, "max_inbound: 0 to 1024");
        return -1;
    }
    if (self->c) ww_conn_set_max_inbound(self->c, (int)n);
    return 0;
}

static PyObject *Conn_get_refused_in_c(ConnObject *self, void *unused) {
    (void)unused;
    return PyLong_FromUnsignedLongLong(self->c ? self->c->syn_reset : 0);
}

static PyObject *Conn_get_most_parsed(ConnObject *self, void *unused) {
    (void)unused;
    return PyLong_FromUnsignedLong(self->c ? self->c->parse_most : 0);
}

static PyObject *Conn_get_reads_cut(ConnObject *self, void *unused) {
    (void)unused;
    return PyLong_FromUnsignedLongLong(self->c ? self->c->parse_cut : 0);
}

static PyObject *Conn_get_reading(ConnObject *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(!(self->c && self->c->read_paused));
}

static PyObject *Conn_get_writing(ConnObject *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(self->writing);
}

static PyMethodDef Conn_methods[] = {
    {"start_handshake", (PyCFunction)(void (*)(void))Conn_start_handshake,
     METH_VARARGS | METH_KEYWORDS,
     "start_handshake(seed, expect or None, lane=False): the handshake's first bytes"},
    {"other_identity", (PyCFunction)Conn_other_identity, METH_NOARGS,
     "other_identity(): None, or an unchecked identity's (key message, signature, static)"},
    {"handshake_step", (PyCFunction)Conn_handshake_step, METH_NOARGS,
     "the add_reader callback during the handshake: None, or the peer's key once done"},
    {"readable", (PyCFunction)Conn_readable, METH_NOARGS, "the add_reader callback"},
    {"flush", (PyCFunction)Conn_flush, METH_NOARGS, "send what the streams queued"},
    {"writable", (PyCFunction)Conn_writable, METH_NOARGS, "the add_writer callback"},
    {"open", (PyCFunction)Conn_open, METH_NOARGS, "a new stream's id"},
    {"ping", (PyCFunction)Conn_ping, METH_VARARGS, "ping(opaque=0): a Yamux ping"},
    {"free", (PyCFunction)Conn_free, METH_NOARGS, "free the C connection"},
    {"get_write_buffer_size", (PyCFunction)Conn_get_write_buffer_size, METH_NOARGS,
     "encrypted bytes the socket has not taken yet"},
    {NULL, NULL, 0, NULL}};

static PyMemberDef Conn_members[] = {
    {"streams", T_OBJECT, offsetof(ConnObject, streams), READONLY, "sid -> Stream"},
    {"loop", T_OBJECT, offsetof(ConnObject, loop), READONLY, NULL},
    {"fd", T_INT, offsetof(ConnObject, fd), READONLY, NULL},
    {"lane", T_BOOL, offsetof(ConnObject, lane), READONLY,
     "the handshake agreed on /ww/lane/0.1.0 (not /noise)"},
    {NULL, 0, 0, 0, NULL}};

static PyGetSetDef Conn_getset[] = {
    {"writing", (getter)Conn_get_writing, NULL, "a writer is registered", NULL},
    {"reading", (getter)Conn_get_reading, NULL,
     "False while reading is paused: the out buffer went over 512 KiB (what the peer made it "
     "send, unsent because the peer does not read) and is not under 256 KiB yet", NULL},
    {"max_inbound", (getter)Conn_get_max_inbound, (setter)Conn_set_max_inbound,
     "streams the peer opened held at once, at most: a SYN past it is reset in C, never "
     "seen by _new_stream (0: every SYN; 1024 by default)", NULL},
    {"refused_in_c", (getter)Conn_get_refused_in_c, NULL,
     "SYNs reset in C (past max_inbound, or past the 64-at-once, 256-a-second bucket)", NULL},
    {"most_parsed", (getter)Conn_get_most_parsed, NULL,
     "the most Yamux frames one readable call parsed (at most PARSE_BUDGET)", NULL},
    {"reads_cut", (getter)Conn_get_reads_cut, NULL,
     "readable calls that stopped at the budget with input left (each went on in a call "
     "scheduled with call_soon)", NULL},
    {"open_streams", (getter)Conn_get_open_streams, NULL,
     "Yamux streams the C connection holds (not yet closed both ways, nor reset)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ww.p2p._native._ext.Conn",
    .tp_basicsize = sizeof(ConnObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Conn_traverse,
    .tp_clear = (inquiry)Conn_clear,
    .tp_free = PyObject_GC_Del,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Conn_init,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_methods = Conn_methods,
    .tp_members = Conn_members,
    .tp_getset = Conn_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ww.p2p._native._ext",
                                    "conn.c as a CPython extension (see ww.p2p._native)", -1,
                                    NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ext(void) {
    if (PyType_Ready(&ConnType) < 0 || PyType_Ready(&StreamType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ConnType);
    Py_INCREF(&StreamType);
    if (PyModule_AddObject(m, "Conn", (PyObject *)&ConnType) ||
        PyModule_AddObject(m, "Stream", (PyObject *)&StreamType) ||
        PyModule_AddIntConstant(m, "PARSE_BUDGET", PARSE_BUDGET) ||
        PyModule_AddIntConstant(m, "READ_BUDGET", READ_BUDGET)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
