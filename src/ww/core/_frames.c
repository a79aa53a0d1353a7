/* ww.core._frames: frames.c (Cap'n Proto framing from untrusted bytes) as a CPython
 * extension, built by setuptools with the package (setup.py); ww.core.capnp_frames exports
 * it under its documented names.  Why it is C, and what it measured: frames.c's head. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "frames.c"

static PyObject *TooManySegments;

/* ---- helpers ---- */

/* `sizes` (a sequence of ints, each a 32-bit segment size in words) into a C array of n
 * (malloc'd when n > FR_MAX_SEGMENTS: *heap set); starts gets room for n words too.  0 and an
 * exception on failure. */
typedef struct {
    uint32_t local[FR_MAX_SEGMENTS];
    uint64_t starts_local[FR_MAX_SEGMENTS];
    uint32_t *sizes;
    uint64_t *starts;
    size_t n;
} sizes_t;

static int sizes_from(PyObject *obj, sizes_t *s) {
    s->sizes = s->local;
    s->starts = s->starts_local;
    /* A tuple, not PySequence_Fast's list itself: an item's __index__ may change a list
     * (and free its items) while they are read. */
    PyObject *seq = PyTuple_Check(obj) ? Py_NewRef(obj) : PySequence_Tuple(obj);
    if (!seq) return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (n > FR_MAX_SEGMENTS) {
        if ((size_t)n > ((size_t)1 << 28)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "too many segment sizes");
            return 0;
        }
        s->sizes = PyMem_Malloc(sizeof(uint32_t) * (size_t)n);
        s->starts = PyMem_Malloc(sizeof(uint64_t) * (size_t)n);
        if (!s->sizes || !s->starts) {
            PyMem_Free(s->sizes == s->local ? NULL : s->sizes);
            PyMem_Free(s->starts == s->starts_local ? NULL : s->starts);
            s->sizes = s->local;
            s->starts = s->starts_local;
            Py_DECREF(seq);
            PyErr_NoMemory();
            return 0;
        }
    }
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
        if (v == -1 && PyErr_Occurred()) goto fail;
        if (overflow || v < 0 || v > 0xFFFFFFFFLL) {
            PyErr_SetString(PyExc_ValueError, "a segment size is 32 bits (words)");
            goto fail;
        }
        s->sizes[i] = (uint32_t)v;
    }
    s->n = (size_t)n;
    Py_DECREF(seq);
    return 1;
fail:
    Py_DECREF(seq);
    if (s->sizes != s->local) {
        PyMem_Free(s->sizes);
        PyMem_Free(s->starts);
        s->sizes = s->local;
        s->starts = s->starts_local;
    }
    return 0;
}

static void sizes_release(sizes_t *s) {
    if (s->sizes != s->local) {
        PyMem_Free(s->sizes);
        PyMem_Free(s->starts);
    }
}

static int members_contain(void *ctx, unsigned which) {
    PyObject *w = PyLong_FromUnsignedLong(which);
    if (!w) return -1;
    int r = PySequence_Contains((PyObject *)ctx, w);
    Py_DECREF(w);
    return r;
}

/* The Python value of fr_rpc_member's answer. */
static PyObject *member_value(int r, unsigned which, uint32_t id) {
    switch (r) {
    case FR_ERROR:
        return NULL;
    case FR_OTHER:
        return Py_BuildValue("(Ii)", which, -1);
    case FR_NULL:
        return Py_BuildValue("(IO)", which, Py_None);
    case FR_ID:
        return Py_BuildValue("(Ik)", which, (unsigned long)id);
    default:
        Py_RETURN_NONE;
    }
}

/* The segment table at the start of buf: 1 (sizes in s), 0 (not all there), -1 (error). */
static int table_of(PyObject *obj, sizes_t *s) {
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE) < 0) return -1;
    const uint8_t *p = b.buf;
    int r = 0;
    s->sizes = s->local;
    s->starts = s->starts_local;
    if (b.len >= 4) {
        uint64_t segments = (uint64_t)fr_u32(p) + 1;
        if (segments > FR_MAX_SEGMENTS) {
            PyErr_Format(TooManySegments, "a message of %llu segments",
                         (unsigned long long)segments);
            r = -1;
        } else if ((uint64_t)b.len >= fr_header_size(segments)) {
            for (uint64_t i = 0; i < segments; i++) s->sizes[i] = fr_u32(p + 4 + 4 * i);
            s->n = (size_t)segments;
            r = 1;
        }
    }
    PyBuffer_Release(&b);
    return r;
}

/* ---- module functions ---- */

PyDoc_STRVAR(header_size_doc,
             "header_size(segments)\n--\n\n"
             "Bytes of the segment table of a message of ``segments`` segments (a whole word).");

static PyObject *header_size(PyObject *mod, PyObject *arg) {
    (void)mod;
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (overflow || n > ((long long)1 << 60) || n < -((long long)1 << 60)) {
        PyErr_SetString(PyExc_OverflowError, "segments out of range");
        return NULL;
    }
    return PyLong_FromLongLong((4 + 4 * n + 7) & ~(long long)7);
}

PyDoc_STRVAR(segment_sizes_doc,
             "segment_sizes(buf)\n--\n\n"
             "The segment sizes, in words, of the message starting ``buf`` (None: its table is\n"
             "not all there yet).  Raises :class:`TooManySegments`.");

static PyObject *segment_sizes(PyObject *mod, PyObject *arg) {
    (void)mod;
    sizes_t s;
    int r = table_of(arg, &s);
    if (r < 0) return NULL;
    if (!r) Py_RETURN_NONE;
    PyObject *list = PyList_New((Py_ssize_t)s.n);
    if (!list) return NULL;
    for (size_t i = 0; i < s.n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(s.sizes[i]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    return list;
}

PyDoc_STRVAR(message_size_doc,
             "message_size(buf)\n--\n\n"
             "Bytes of the message starting ``buf``, table included (None: its table is not all\n"
             "there yet).  Raises :class:`TooManySegments`.");

static PyObject *message_size(PyObject *mod, PyObject *arg) {
    (void)mod;
    sizes_t s;
    int r = table_of(arg, &s);
    if (r < 0) return NULL;
    if (!r) Py_RETURN_NONE;
    uint64_t body = 0;
    for (size_t i = 0; i < s.n; i++) body += s.sizes[i];
    return PyLong_FromUnsignedLongLong(fr_header_size(s.n) + 8 * body);
}

PyDoc_STRVAR(
    struct_at_doc,
    "struct_at(head, starts, sizes, segment, at, far=True)\n--\n\n"
    "The struct the pointer in word ``at`` of ``segment`` points to, as (segment, first word,\n"
    "data words, pointer words); (0, 0, 0, 0) for a null pointer (a struct of defaults); None\n"
    "when it is not a struct pointer this reader can follow within ``head`` (the first bytes\n"
    "of the segments, ``starts`` the word each segment starts at).  ``far``: follow far\n"
    "pointers into other segments (else they are not followed: None).");

static PyObject *struct_at(PyObject *mod, PyObject *args, PyObject *kwargs) {
    (void)mod;
    static char *kwlist[] = {"head", "starts", "sizes", "segment", "at", "far", NULL};
    Py_buffer head;
    PyObject *starts_obj, *sizes_obj;
    Py_ssize_t segment, at;
    int far = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*OOnn|p:struct_at", kwlist, &head,
                                     &starts_obj, &sizes_obj, &segment, &at, &far))
        return NULL;
    PyObject *result = NULL;
    sizes_t s, st;
    if (!sizes_from(sizes_obj, &s)) goto out_head;
    if (!sizes_from(starts_obj, &st)) goto out_sizes; /* starts are 32-bit too here */
    if (st.n != s.n || segment < 0 || (size_t)segment >= s.n || at < 0) {
        PyErr_SetString(PyExc_ValueError, "starts, sizes, segment or at out of range");
        goto out_starts;
    }
    for (size_t i = 0; i < s.n; i++) s.starts[i] = st.sizes[i];
    fr_struct found;
    if (fr_struct_at(head.buf, (size_t)head.len, s.starts, s.sizes, s.n, (uint64_t)segment,
                     (uint64_t)at, far, &found))
        result = Py_BuildValue("(KKKK)", (unsigned long long)found.segment,
                               (unsigned long long)found.first, (unsigned long long)found.data,
                               (unsigned long long)found.pointers);
    else
        result = Py_NewRef(Py_None);
out_starts:
    sizes_release(&st);
out_sizes:
    sizes_release(&s);
out_head:
    PyBuffer_Release(&head);
    return result;
}

PyDoc_STRVAR(
    rpc_member_doc,
    "rpc_member(head, sizes, members=(CALL, RETURN), far=True)\n--\n\n"
    "(which member of rpc.capnp's ``Message`` union, id) of a message, from its segment\n"
    "sizes (in words) and the first bytes of its segments (``head``): for one of\n"
    "``members``, id is the first 32 bits of the member's struct (a call's question id, a\n"
    "return's answer id, a bootstrap's question id), or None when the member's pointer is\n"
    "null or absent (a struct of defaults: id 0 to a Cap'n Proto reader); -1 for any other\n"
    "member.  None when ``head`` does not show it.  Read as Cap'n Proto readers do: a field\n"
    "past a struct's end is 0.");

static PyObject *rpc_member(PyObject *mod, PyObject *args, PyObject *kwargs) {
    (void)mod;
    static char *kwlist[] = {"head", "sizes", "members", "far", NULL};
    Py_buffer head;
    PyObject *sizes_obj, *members = NULL;
    int far = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*O|Op:rpc_member", kwlist, &head,
                                     &sizes_obj, &members, &far))
        return NULL;
    sizes_t s;
    PyObject *result = NULL;
    if (sizes_from(sizes_obj, &s)) {
        unsigned which = 0;
        uint32_t id = 0;
        int r = fr_rpc_member(head.buf, (size_t)head.len, s.sizes, s.n, s.starts,
                              members ? members_contain : fr_call_or_return, members, far,
                              &which, &id);
        result = member_value(r, which, id);
        sizes_release(&s);
    }
    PyBuffer_Release(&head);
    return result;
}

/* ---- Framer ---- */

typedef struct {
    PyObject_HEAD
    PyObject *on_message, *classify, *unsure;
    PyObject *kinds; /* (call, return, other[, bootstrap]): classify in C, as
                      * ww.host.wire.classify does */
    PyObject *kind, *id; /* the current message's, once its head is in */
    fr_framer f;
} FramerObject;

static int Framer_traverse(FramerObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->on_message);
    Py_VISIT(self->classify);
    Py_VISIT(self->unsure);
    Py_VISIT(self->kinds);
    Py_VISIT(self->kind);
    Py_VISIT(self->id);
    return 0;
}

static int Framer_clear(FramerObject *self) {
    Py_CLEAR(self->on_message);
    Py_CLEAR(self->classify);
    Py_CLEAR(self->unsure);
    Py_CLEAR(self->kinds);
    Py_CLEAR(self->kind);
    Py_CLEAR(self->id);
    return 0;
}

static void Framer_dealloc(FramerObject *self) {
    PyObject_GC_UnTrack(self);
    Framer_clear(self);
    fr_free(&self->f);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Framer_init(FramerObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"on_message", "classify", "unsure", "head", NULL};
    PyObject *on_message, *classify, *unsure;
    Py_ssize_t head;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOn:Framer", kwlist, &on_message, &classify,
                                     &unsure, &head))
        return -1;
    if (head < 0) {
        PyErr_SetString(PyExc_ValueError, "head must be >= 0");
        return -1;
    }
    PyObject *kinds = NULL;
    if (PyTuple_Check(classify)) {
        if (PyTuple_GET_SIZE(classify) != 3 && PyTuple_GET_SIZE(classify) != 4) {
            PyErr_SetString(PyExc_TypeError,
                            "classify: a callable or (call, return, other[, bootstrap])");
            return -1;
        }
        kinds = classify;
    }
    Framer_clear(self);
    fr_free(&self->f);
    self->on_message = Py_NewRef(on_message);
    self->classify = Py_NewRef(classify);
    self->unsure = Py_NewRef(unsure);
    self->kinds = Py_XNewRef(kinds);
    self->kind = Py_NewRef(unsure);
    self->id = PyLong_FromLong(0);
    if (!self->id) return -1;
    fr_init(&self->f, (uint64_t)head);
    return 0;
}

static void set_kind(FramerObject *self, PyObject *kind, PyObject *id) {
    PyObject *k = self->kind, *i = self->id;
    self->kind = kind; /* references given */
    self->id = id;
    Py_XDECREF(k);
    Py_XDECREF(i);
}

/* Classify the head just collected: 0, or -1 for an exception that is not an Exception
 * (KeyboardInterrupt ...), which stands; an Exception makes the message unsure. */
static int Framer_classify(FramerObject *self) {
    fr_framer *f = &self->f;
    if (self->kinds) {
        uint64_t starts[FR_MAX_SEGMENTS];
        unsigned which = 0;
        uint32_t ident = 0;
        /* with a fourth kind, a Bootstrap is told apart (its question id read) */
        int bootstrap = PyTuple_GET_SIZE(self->kinds) == 4;
        int r = fr_rpc_member(f->head, f->hlen, f->sizes, f->nsizes, starts,
                              bootstrap ? fr_asked : fr_call_or_return, NULL, 1, &which, &ident);
        PyObject *kind = self->unsure;
        if (r == FR_OTHER)
            kind = PyTuple_GET_ITEM(self->kinds, 2);
        else if (r == FR_NULL || r == FR_ID)
            kind = PyTuple_GET_ITEM(self->kinds, which == 2 ? 0 : which == 3 ? 1 : 3);
        PyObject *id = PyLong_FromUnsignedLong(r == FR_ID ? ident : 0);
        if (!id) return -1;
        set_kind(self, Py_NewRef(kind), id);
        return 0;
    }
    PyObject *head = PyBytes_FromStringAndSize((const char *)f->head, (Py_ssize_t)f->hlen);
    PyObject *sizes = head ? PyList_New((Py_ssize_t)f->nsizes) : NULL;
    PyObject *got = NULL, *tuple = NULL;
    if (sizes) {
        size_t i = 0;
        for (; i < f->nsizes; i++) {
            PyObject *v = PyLong_FromUnsignedLong(f->sizes[i]);
            if (!v) break;
            PyList_SET_ITEM(sizes, (Py_ssize_t)i, v);
        }
        if (i == f->nsizes) {
            PyObject *argv[2] = {head, sizes};
            PyObject *classify = Py_NewRef(self->classify); /* the call may replace it */
            got = PyObject_Vectorcall(classify, argv, 2, NULL);
            Py_DECREF(classify);
        }
    }
    Py_XDECREF(head);
    Py_XDECREF(sizes);
    if (got) {
        tuple = PySequence_Tuple(got);
        Py_DECREF(got);
        if (tuple && PyTuple_GET_SIZE(tuple) != 2) {
            PyErr_Format(PyExc_ValueError, "classify gave %zd values, not 2",
                         PyTuple_GET_SIZE(tuple));
            Py_CLEAR(tuple);
        }
    }
    if (!tuple) { /* never raise inside the transport: count it */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
        PyErr_Clear();
        PyObject *zero = PyLong_FromLong(0);
        if (!zero) return -1;
        set_kind(self, Py_NewRef(self->unsure), zero);
        return 0;
    }
    set_kind(self, Py_NewRef(PyTuple_GET_ITEM(tuple, 0)), Py_NewRef(PyTuple_GET_ITEM(tuple, 1)));
    Py_DECREF(tuple);
    return 0;
}

static int Framer_report(FramerObject *self, PyObject *kind, PyObject *id, uint64_t size) {
    PyObject *n = PyLong_FromUnsignedLongLong(size);
    if (!n) return -1;
    Py_INCREF(kind); /* the callback may feed again and replace self->kind */
    Py_INCREF(id);
    PyObject *on_message = Py_NewRef(self->on_message); /* or re-initialise the Framer */
    PyObject *argv[3] = {kind, id, n};
    PyObject *r = PyObject_Vectorcall(on_message, argv, 3, NULL);
    Py_DECREF(on_message);
    Py_DECREF(kind);
    Py_DECREF(id);
    Py_DECREF(n);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

PyDoc_STRVAR(Framer_feed_doc, "feed(data)\n--\n\nThe stream's next bytes (any buffer).");

static PyObject *Framer_feed(FramerObject *self, PyObject *data) {
    if (!self->on_message) {
        PyErr_SetString(PyExc_RuntimeError, "Framer not initialised");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(data, &b, PyBUF_SIMPLE) < 0) return NULL;
    size_t pos = 0, end = (size_t)b.len;
    int ok = 1;
    while (ok) {
        uint64_t n = 0;
        int ev = fr_step(&self->f, b.buf, end, &pos, &n);
        if (ev == FR_MORE) break;
        switch (ev) {
        case FR_NOMEM:
            PyErr_NoMemory();
            ok = 0;
            break;
        case FR_CLASSIFY:
            ok = Framer_classify(self) == 0;
            break;
        case FR_MESSAGE:
            ok = Framer_report(self, self->kind, self->id, self->f.size) == 0;
            break;
        case FR_UNSURE: {
            PyObject *zero = PyLong_FromLong(0);
            ok = zero && Framer_report(self, self->unsure, zero, n) == 0;
            Py_XDECREF(zero);
            break;
        }
        case FR_EMPTY: { /* no root at all: KJ refuses it */
            PyObject *zero = PyLong_FromLong(0);
            if (!zero) {
                ok = 0;
                break;
            }
            set_kind(self, Py_NewRef(self->unsure), zero);
            ok = Framer_report(self, self->unsure, self->id, self->f.size) == 0;
            break;
        }
        }
    }
    PyBuffer_Release(&b);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Framer_get_broken(FramerObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->f.broken);
}

static int Framer_set_broken(FramerObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "broken cannot be deleted");
        return -1;
    }
    int v = PyObject_IsTrue(value);
    if (v < 0) return -1;
    self->f.broken = v;
    return 0;
}

static PyMethodDef Framer_methods[] = {
    {"feed", (PyCFunction)Framer_feed, METH_O, Framer_feed_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Framer_getset[] = {
    {"broken", (getter)Framer_get_broken, (setter)Framer_set_broken,
     "True after a segment table past MAX_SEGMENTS: every byte after it is reported unsure.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(
    Framer_doc,
    "Framer(on_message, classify, unsure, head)\n--\n\n"
    "Cuts a byte stream, fed in pieces of any size, into Cap'n Proto messages and reports\n"
    "each as ``on_message(kind, id, size)`` once its last byte is in, ``(kind, id)`` being\n"
    "``classify(head, sizes)`` of its first ``head`` bytes of segments: a pause then never\n"
    "stops a message half-read.  Segments are skipped, not copied.  A segment table past\n"
    ":data:`MAX_SEGMENTS`, or a message without segments, is reported as kind ``unsure``; after\n"
    "such a table the stream is unreadable: every byte after it is reported as ``unsure``\n"
    "too (KJ drops such a connection anyway).  ``classify`` may instead be a tuple\n"
    "``(call, return, other)``: the message is classified in C, by :func:`rpc_member`, as\n"
    "``(call, question id)``, ``(return, answer id)`` (id 0 for a null struct),\n"
    "``(other, 0)``, or ``(unsure, 0)`` when the head does not show which.");

static PyTypeObject FramerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ww.core._frames.Framer",
    .tp_basicsize = sizeof(FramerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Framer_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Framer_init,
    .tp_dealloc = (destructor)Framer_dealloc,
    .tp_traverse = (traverseproc)Framer_traverse,
    .tp_clear = (inquiry)Framer_clear,
    .tp_methods = Framer_methods,
    .tp_getset = Framer_getset,
};

static PyMethodDef module_methods[] = {
    {"header_size", header_size, METH_O, header_size_doc},
    {"segment_sizes", segment_sizes, METH_O, segment_sizes_doc},
    {"message_size", message_size, METH_O, message_size_doc},
    {"struct_at", (PyCFunction)(void (*)(void))struct_at, METH_VARARGS | METH_KEYWORDS,
     struct_at_doc},
    {"rpc_member", (PyCFunction)(void (*)(void))rpc_member, METH_VARARGS | METH_KEYWORDS,
     rpc_member_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ww.core._frames",
                                    "Cap'n Proto framing in C (frames.c); see "
                                    "ww.core.capnp_frames.",
                                    -1, module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__frames(void) {
    if (PyType_Ready(&FramerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    TooManySegments = PyErr_NewExceptionWithDoc(
        "ww.core._frames.TooManySegments",
        "A segment table of more than :data:`MAX_SEGMENTS` segments.", PyExc_ValueError, NULL);
    if (!TooManySegments || PyModule_AddObjectRef(m, "TooManySegments", TooManySegments) < 0 ||
        PyModule_AddObjectRef(m, "Framer", (PyObject *)&FramerType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SEGMENTS", FR_MAX_SEGMENTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
