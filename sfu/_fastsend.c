/*
 * One sendmmsg(2) for many UDP datagrams: the forwarding path's batched send.
 *
 * Python has no sendmmsg; filling the kernel's mmsghdr/iovec arrays from Python through ctypes
 * costs more than the system calls it saves (benchmarks/RESULTS.md), so this does it in C.
 * The pure-Python path (one transport.sendto per datagram) stays the reference: the module
 * is optional and sfu/ice.py falls back when it is missing.
 *
 * send_batch(fd, datagrams) -> int
 *     datagrams: a list of (bytes-like, (host, port)) with IPv4 or IPv6 literal hosts.
 *     Returns how many datagrams the kernel took, from the front; the caller sends the rest
 *     another way (EAGAIN when the socket buffer is full, or an error for one datagram).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include "structmember.h"
#include <sys/socket.h>

#define MAX_BATCH 256

typedef union {
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} address_t;

/* Fills *address from a (host, port[, ...]) tuple; 0 on success, -1 with no exception set
 * when the tuple is not an address we can write (the caller stops the batch there). */
static int parse_address(PyObject *tuple, address_t *address, socklen_t *length) {
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) < 2) {
        return -1;
    }
    PyObject *host = PyTuple_GET_ITEM(tuple, 0);
    PyObject *port = PyTuple_GET_ITEM(tuple, 1);
    if (!PyUnicode_Check(host) || !PyLong_Check(port)) {
        return -1;
    }
    const char *text = PyUnicode_AsUTF8(host);
    long number = PyLong_AsLong(port);
    if (text == NULL || number < 0 || number > 65535) {
        PyErr_Clear();
        return -1;
    }
    memset(address, 0, sizeof(*address));
    if (inet_pton(AF_INET, text, &address->v4.sin_addr) == 1) {
        address->v4.sin_family = AF_INET;
        address->v4.sin_port = htons((uint16_t)number);
        *length = sizeof(address->v4);
        return 0;
    }
    if (inet_pton(AF_INET6, text, &address->v6.sin6_addr) == 1) {
        address->v6.sin6_family = AF_INET6;
        address->v6.sin6_port = htons((uint16_t)number);
        *length = sizeof(address->v6);
        return 0;
    }
    return -1;
}

static PyObject *send_batch(PyObject *self, PyObject *args) {
    int fd;
    PyObject *datagrams;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &PyList_Type, &datagrams)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(datagrams);
    if (count > MAX_BATCH) {
        count = MAX_BATCH;
    }
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    address_t addresses[MAX_BATCH];
    Py_buffer buffers[MAX_BATCH];
    Py_ssize_t filled = 0;
    for (; filled < count; filled++) {
        PyObject *item = PyList_GET_ITEM(datagrams, filled);
        socklen_t length;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            parse_address(PyTuple_GET_ITEM(item, 1), &addresses[filled], &length) != 0) {
            break;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &buffers[filled], PyBUF_SIMPLE) != 0) {
            PyErr_Clear();
            break;
        }
        vectors[filled].iov_base = buffers[filled].buf;
        vectors[filled].iov_len = (size_t)buffers[filled].len;
        memset(&messages[filled], 0, sizeof(messages[filled]));
        messages[filled].msg_hdr.msg_name = &addresses[filled];
        messages[filled].msg_hdr.msg_namelen = length;
        messages[filled].msg_hdr.msg_iov = &vectors[filled];
        messages[filled].msg_hdr.msg_iovlen = 1;
    }
    int sent = 0;
    if (filled > 0) {
        /* A non-blocking call of a few microseconds: not worth releasing the GIL. */
        sent = sendmmsg(fd, messages, (unsigned int)filled, MSG_DONTWAIT);
        if (sent < 0) {
            sent = 0; /* EAGAIN or an error on the first datagram: the caller retries it */
        }
    }
    for (Py_ssize_t i = 0; i < filled; i++) {
        PyBuffer_Release(&buffers[i]);
    }
    return PyLong_FromLong(sent);
}

/* ================================ the fan-out =========================================== */

/* libsrtp 2's srtp_protect, found at run time through pylibsrtp's cffi module (sfu/rtc_adapter.py
 * checks its C type first), so this module does not link against libsrtp itself. */
typedef int (*srtp_protect_fn)(void *context, void *packet, int *length);
static srtp_protect_fn srtp_protect_function = NULL;
/* The longest plaintext packet protected (pylibsrtp's 1500-byte buffer less libsrtp's trailer,
 * as in the Python path), and the room each slot keeps for the trailer. */
static Py_ssize_t max_plaintext = 1356;
#define SLOT_SIZE 2048
#define SRTP_TRAILER_ROOM 144
/* How far behind the newest a packet may be before the munger drops it: sfu/munger.py's
 * REORDER_WINDOW, handed over by sfu/fanout.py at import (set_limits) so the two paths agree. */
static long long reorder_window = 1000;
/* Packets libsrtp refused to protect (sfu/fanout.py adds them to the Python path's count for
 * the metrics): a refusal drops the packet, and dropped packets must show somewhere. */
static unsigned long long protect_failure_count = 0;

static PyObject *set_limits(PyObject *self, PyObject *args) {
    long long window;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "Ln", &window, &limit)) {
        return NULL;
    }
    if (window < 1 || window > 32768 || limit < 12 || limit > SLOT_SIZE - SRTP_TRAILER_ROOM) {
        PyErr_SetString(PyExc_ValueError, "reorder window or plaintext limit out of range");
        return NULL;
    }
    reorder_window = window;
    max_plaintext = limit;
    Py_RETURN_NONE;
}

static PyObject *protect_failures(PyObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(protect_failure_count);
}

static PyObject *set_srtp_protect(PyObject *self, PyObject *args) {
    unsigned long long address;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "Kn", &address, &limit)) {
        return NULL;
    }
    if (limit < 12 || limit > SLOT_SIZE - SRTP_TRAILER_ROOM) {
        PyErr_SetString(PyExc_ValueError, "plaintext limit out of range");
        return NULL;
    }
    srtp_protect_function = (srtp_protect_fn)(uintptr_t)address;
    max_plaintext = limit;
    Py_RETURN_NONE;
}

/* ---- Sink: one subscriber transport's way out ---------------------------------------------
 * Slow: send(memoryview) -> bool, the Python path (protect and send). Fast, once the transport
 * has SRTP keys and a UDP path: libsrtp context, socket and address, protected and batched
 * here; spill(bytes, address) takes a datagram the kernel did not (EAGAIN). */
/* Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01): each
 * packet to the subscriber carries the transport's next number; what went out under it is
 * remembered for reading the subscriber's feedback (sfu/twcc.py is the reference). */
#define TWCC_RING 2048
#define TWCC_BURST_S 0.005 /* libwebrtc's send-time grouping of packets (InterArrival) */
typedef struct {
    double time;
    uint32_t size;
    uint16_t sequence;
    char used;
} twcc_record_t;

typedef struct {
    PyObject_HEAD
    PyObject *send;
    PyObject *spill;
    PyObject *keepalive; /* owns the libsrtp context: it must outlive our use of it */
    PyObject *address;
    void *context;
    int fd;
    address_t sockaddr;
    socklen_t sockaddr_length;
    twcc_record_t *twcc; /* NULL until enable_twcc */
    uint16_t twcc_next;
    /* A libsrtp session of its own for each downtrack (set_sessions): libsrtp finds a
     * session's stream by walking a list of every SSRC it has protected, so one session for a
     * subscriber of many tracks cost a tenth of the meeting scenario's time. session_for(core)
     * -> (context address, keepalive) or None before the keys; send_protected(datagram) sends
     * what a downtrack protected itself when there is no fast path. */
    PyObject *session_for;
    PyObject *send_protected;
} Sink;

static int Sink_traverse(Sink *self, visitproc visit, void *arg) {
    Py_VISIT(self->send);
    Py_VISIT(self->spill);
    Py_VISIT(self->keepalive);
    Py_VISIT(self->address);
    Py_VISIT(self->session_for);
    Py_VISIT(self->send_protected);
    return 0;
}

static void Sink_clear_fast_fields(Sink *self) {
    self->context = NULL;
    self->fd = -1;
    Py_CLEAR(self->spill);
    Py_CLEAR(self->keepalive);
    Py_CLEAR(self->address);
}

static int Sink_clear(Sink *self) {
    Sink_clear_fast_fields(self);
    Py_CLEAR(self->send);
    Py_CLEAR(self->session_for);
    Py_CLEAR(self->send_protected);
    return 0;
}

static void Sink_dealloc(Sink *self) {
    PyObject_GC_UnTrack(self);
    Sink_clear(self);
    PyMem_Free(self->twcc);
    self->twcc = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Sink_init(Sink *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"send", NULL};
    PyObject *send;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", names, &send)) {
        return -1;
    }
    if (!PyCallable_Check(send)) {
        PyErr_SetString(PyExc_TypeError, "send must be callable");
        return -1;
    }
    Sink_clear(self);
    Py_INCREF(send);
    self->send = send;
    return 0;
}

static PyObject *Sink_set_fast(Sink *self, PyObject *args) {
    unsigned long long context;
    PyObject *keepalive, *address, *spill;
    int fd;
    if (!PyArg_ParseTuple(args, "KOiOO", &context, &keepalive, &fd, &address, &spill)) {
        return NULL;
    }
    address_t parsed;
    socklen_t length;
    if (context == 0 || fd < 0 || srtp_protect_function == NULL ||
        parse_address(address, &parsed, &length) != 0 || !PyCallable_Check(spill)) {
        Sink_clear_fast_fields(self);
        Py_RETURN_FALSE;
    }
    Sink_clear_fast_fields(self);
    Py_INCREF(keepalive);
    Py_INCREF(address);
    Py_INCREF(spill);
    self->keepalive = keepalive;
    self->address = address;
    self->spill = spill;
    self->context = (void *)(uintptr_t)context;
    self->fd = fd;
    self->sockaddr = parsed;
    self->sockaddr_length = length;
    Py_RETURN_TRUE;
}

static PyObject *Sink_set_sessions(Sink *self, PyObject *args) {
    PyObject *session_for, *send_protected;
    if (!PyArg_ParseTuple(args, "OO", &session_for, &send_protected)) {
        return NULL;
    }
    if (!PyCallable_Check(session_for) || !PyCallable_Check(send_protected)) {
        PyErr_SetString(PyExc_TypeError, "session_for and send_protected must be callable");
        return NULL;
    }
    Py_INCREF(session_for);
    Py_INCREF(send_protected);
    Py_XSETREF(self->session_for, session_for);
    Py_XSETREF(self->send_protected, send_protected);
    Py_RETURN_NONE;
}

static PyObject *Sink_clear_fast(Sink *self, PyObject *unused) {
    Sink_clear_fast_fields(self);
    Py_RETURN_NONE;
}

static PyObject *Sink_get_fast(Sink *self, void *closure) {
    return PyBool_FromLong(self->context != NULL);
}

static PyObject *Sink_enable_twcc(Sink *self, PyObject *arg) {
    long first = PyLong_AsLong(arg);
    if (first == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->twcc != NULL) {
        Py_RETURN_NONE; /* already on: the numbering goes on */
    }
    self->twcc = PyMem_Calloc(TWCC_RING, sizeof(twcc_record_t));
    if (self->twcc == NULL) {
        return PyErr_NoMemory();
    }
    self->twcc_next = (uint16_t)first;
    Py_RETURN_NONE;
}

/* Stamps the transport's next number into the two bytes at at, remembering when and how big. */
static void stamp_twcc(Sink *sink, uint8_t *at, double now, Py_ssize_t size) {
    uint16_t number = sink->twcc_next++;
    at[0] = number >> 8;
    at[1] = number & 0xFF;
    twcc_record_t *record = &sink->twcc[number & (TWCC_RING - 1)];
    record->time = now;
    record->size = (uint32_t)size;
    record->sequence = number;
    record->used = 1;
}

/* The packet status symbols of a feedback's chunks (0 not received, 1 small delta, 2 large);
 * the offset after the chunks, or -1 when they do not cover count packets. */
static Py_ssize_t twcc_statuses(const uint8_t *data, Py_ssize_t length, int count,
                                uint8_t *status) {
    Py_ssize_t at = 8;
    int decoded = 0;
    while (decoded < count) {
        if (at + 2 > length) {
            return -1;
        }
        uint16_t chunk = (uint16_t)(data[at] << 8 | data[at + 1]);
        at += 2;
        if (!(chunk & 0x8000)) { /* run length: one symbol, up to 8191 times */
            int run = chunk & 0x1FFF;
            for (int i = 0; i < run && decoded < count; i++) {
                status[decoded++] = (chunk >> 13) & 0x03;
            }
        } else if (!(chunk & 0x4000)) { /* 14 one-bit symbols */
            for (int i = 0; i < 14 && decoded < count; i++) {
                status[decoded++] = (chunk >> (13 - i)) & 0x01;
            }
        } else { /* 7 two-bit symbols */
            for (int i = 0; i < 7 && decoded < count; i++) {
                status[decoded++] = (chunk >> (12 - 2 * i)) & 0x03;
            }
        }
    }
    return at;
}

typedef struct {
    PyObject *groups;
    int open;
    double first_send, last_send, last_arrival;
    long long bytes;
} grouping_t;

static int close_group(grouping_t *g) {
    if (!g->open) {
        return 0;
    }
    g->open = 0;
    PyObject *item = Py_BuildValue("(dddL)", g->first_send, g->last_send, g->last_arrival, g->bytes);
    if (item == NULL) {
        return -1;
    }
    int failed = PyList_Append(g->groups, item);
    Py_DECREF(item);
    return failed;
}

static int add_to_group(grouping_t *g, const twcc_record_t *record, double arrival) {
    if (g->open && record->time - g->first_send <= TWCC_BURST_S) {
        if (record->time > g->last_send) {
            g->last_send = record->time;
        }
        if (arrival > g->last_arrival) {
            g->last_arrival = arrival;
        }
        g->bytes += record->size;
        return 0;
    }
    if (close_group(g) != 0) {
        return -1;
    }
    g->open = 1;
    g->first_send = g->last_send = record->time;
    g->last_arrival = arrival;
    g->bytes = record->size;
    return 0;
}

/* Reads one feedback FCI against what was sent: (groups of packets sent within 5 ms of each
 * other as (first send, last send, last arrival, bytes), packets received, packets reported
 * lost, bytes received). Arrival times are the receiver's clock, in seconds. */
static PyObject *Sink_twcc_feedback(Sink *self, PyObject *arg) {
    Py_buffer buffer;
    if (PyObject_GetBuffer(arg, &buffer, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *data = buffer.buf;
    Py_ssize_t length = buffer.len;
    grouping_t g = {PyList_New(0), 0, 0.0, 0.0, 0.0, 0};
    long long received = 0, lost = 0, received_bytes = 0;
    uint8_t *status = NULL;
    int count = length >= 8 ? (data[2] << 8 | data[3]) : 0;
    if (g.groups == NULL || self->twcc == NULL || length < 8 || count == 0) {
        goto done;
    }
    status = PyMem_Malloc((size_t)count);
    if (status == NULL) {
        Py_CLEAR(g.groups);
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t at = twcc_statuses(data, length, count, status);
    if (at < 0) {
        goto done;
    }
    uint16_t base = (uint16_t)(data[0] << 8 | data[1]);
    int32_t reference = data[4] << 16 | data[5] << 8 | data[6];
    if (reference & 0x800000) {
        reference -= 1 << 24;
    }
    double arrival = reference * 0.064;
    for (int i = 0; i < count; i++) {
        if (status[i] == 0) {
            lost++;
            continue;
        }
        int delta;
        if (status[i] == 1 && at + 1 <= length) {
            delta = data[at];
            at += 1;
        } else if (status[i] == 2 && at + 2 <= length) {
            delta = (int16_t)(data[at] << 8 | data[at + 1]);
            at += 2;
        } else {
            break; /* a reserved symbol, or deltas cut short: the rest is unreadable */
        }
        arrival += delta * 0.00025;
        uint16_t number = (uint16_t)(base + i);
        const twcc_record_t *record = &self->twcc[number & (TWCC_RING - 1)];
        if (!record->used || record->sequence != number) {
            continue; /* not ours, or too old to be remembered */
        }
        received++;
        received_bytes += record->size;
        if (add_to_group(&g, record, arrival) != 0) {
            Py_CLEAR(g.groups);
            goto done;
        }
    }
    if (close_group(&g) != 0) {
        Py_CLEAR(g.groups);
    }
done:
    PyMem_Free(status);
    PyBuffer_Release(&buffer);
    if (g.groups == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NLLL)", g.groups, received, lost, received_bytes);
}

static PyObject *Sink_get_twcc_next(Sink *self, void *closure) {
    return PyLong_FromLong(self->twcc_next);
}

static PyMethodDef Sink_methods[] = {
    {"enable_twcc", (PyCFunction)Sink_enable_twcc, METH_O,
     "enable_twcc(first number): stamp transport-wide numbers (once; later calls do nothing)"},
    {"twcc_feedback", (PyCFunction)Sink_twcc_feedback, METH_O,
     "twcc_feedback(fci) -> (groups, received, lost, received bytes)"},
    {"set_fast", (PyCFunction)Sink_set_fast, METH_VARARGS,
     "set_fast(context, keepalive, fd, (host, port), spill) -> whether the fast path is on"},
    {"clear_fast", (PyCFunction)Sink_clear_fast, METH_NOARGS, "back to the Python send"},
    {"set_sessions", (PyCFunction)Sink_set_sessions, METH_VARARGS,
     "set_sessions(session_for, send_protected): a libsrtp session per downtrack"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sink_getset[] = {
    {"fast", (getter)Sink_get_fast, NULL, "whether packets are protected and sent here", NULL},
    {"twcc_next", (getter)Sink_get_twcc_next, NULL, "the next transport-wide number", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SinkType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastsend.Sink",
    .tp_basicsize = sizeof(Sink),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sink_init,
    .tp_dealloc = (destructor)Sink_dealloc,
    .tp_traverse = (traverseproc)Sink_traverse,
    .tp_clear = (inquiry)Sink_clear,
    .tp_methods = Sink_methods,
    .tp_getset = Sink_getset,
};

/* ---- DownTrackCore: one track as one subscriber receives it ------------------------------ */
/* What went out under one of our sequence numbers, so a subscriber's NACK finds the packet
 * behind it even after skips or a change of source moved the numbering (LiveKit's
 * sequencer). Indexed by the low bits of our sequence number. */
#define SENT_RING 512
typedef struct {
    uint32_t ssrc;
    uint16_t out, in;
    char used, marker;
} sent_t;

typedef struct {
    PyObject_HEAD
    Sink *sink;
    void *context;       /* its own libsrtp session (Sink.set_sessions), or NULL */
    PyObject *keepalive; /* owns that session */
    PyObject *extension; /* bytes: the RFC 8285 block written after our fixed header */
    uint32_t ssrc_out;
    int red_payload_type;
    uint8_t payload_types[128];
    char enabled, bound, red_accepted, needs_keyframe;
    unsigned long long packets, octets;
    /* the munger (sfu/munger.py RtpMunger, same arithmetic on 64-bit integers) */
    double clock_rate;
    char has_source, sequence_seen, timestamp_seen;
    uint32_t source;
    int64_t highest_sequence, highest_timestamp;
    int64_t sequence_offset, timestamp_offset, highest_in, source_floor;
    int64_t last_out_sequence, last_out_timestamp;
    double last_now;
    /* The timestamp offset the next source should take (expect_source), when known from the
     * two streams' Sender Reports, instead of the wall-clock estimate. */
    char expecting;
    uint32_t expected_source, expected_in, expected_out;
    /* VP8 payload descriptor munging (RFC 7741 4.2), LiveKit's codecmunger/vp8.go: picture id,
     * TL0PICIDX and KEYIDX continue across a change of source as sequence numbers do. */
    char vp8, vp8_seen, vp8_rebase;
    uint16_t picture_offset, last_picture;
    uint8_t tl0_offset, last_tl0, keyidx_offset, last_keyidx;
    sent_t sent[SENT_RING];
    /* Where in the extension block the transport-wide number goes (-1: not negotiated). */
    int twcc_at;
    /* RTX (RFC 4588), when the subscriber negotiated it: retransmissions and probe padding go
     * on their own SSRC and numbering. */
    int rtx_payload_type;
    uint32_t rtx_ssrc;
    uint16_t rtx_sequence;
    unsigned long long padding_packets, padding_octets;
} DownTrackCore;

static int DownTrackCore_traverse(DownTrackCore *self, visitproc visit, void *arg) {
    Py_VISIT(self->sink);
    Py_VISIT(self->keepalive);
    return 0;
}

static int DownTrackCore_clear(DownTrackCore *self) {
    Py_CLEAR(self->sink);
    self->context = NULL;
    Py_CLEAR(self->keepalive);
    return 0;
}

static void DownTrackCore_dealloc(DownTrackCore *self) {
    PyObject_GC_UnTrack(self);
    DownTrackCore_clear(self);
    Py_CLEAR(self->extension);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int read_payload_types(DownTrackCore *self, PyObject *mapping) {
    for (int i = 0; i < 128; i++) {
        self->payload_types[i] = (uint8_t)i;
    }
    PyObject *key, *value;
    Py_ssize_t position = 0;
    while (PyDict_Next(mapping, &position, &key, &value)) {
        long in = PyLong_AsLong(key), out = PyLong_AsLong(value);
        if (PyErr_Occurred()) {
            return -1;
        }
        if (in < 0 || in > 127 || out < 0 || out > 127) {
            PyErr_SetString(PyExc_ValueError, "payload types are 0-127");
            return -1;
        }
        self->payload_types[in] = (uint8_t)out;
    }
    return 0;
}

static int DownTrackCore_init(DownTrackCore *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"sink",          "ssrc_out",      "clock_rate",       "first_sequence",
                            "first_timestamp", "extension", "payload_types", "red_payload_type",
                            NULL};
    PyObject *sink, *extension, *payload_types;
    unsigned long ssrc_out;
    int clock_rate, red_payload_type;
    long long first_sequence, first_timestamp;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!kiLLSO!i", names, &SinkType, &sink,
                                     &ssrc_out, &clock_rate, &first_sequence, &first_timestamp,
                                     &extension, &PyDict_Type, &payload_types,
                                     &red_payload_type)) {
        return -1;
    }
    if (clock_rate <= 0 || PyBytes_GET_SIZE(extension) > 256) {
        PyErr_SetString(PyExc_ValueError, "bad clock rate or extension block");
        return -1;
    }
    if (read_payload_types(self, payload_types) != 0) {
        return -1;
    }
    Py_INCREF(sink);
    Py_XSETREF(self->sink, (Sink *)sink);
    self->context = NULL; /* a session belongs to one sink's keys */
    Py_CLEAR(self->keepalive);
    Py_INCREF(extension);
    Py_XSETREF(self->extension, extension);
    self->ssrc_out = (uint32_t)ssrc_out;
    self->red_payload_type = red_payload_type;
    self->enabled = 1;
    self->bound = 1;
    self->red_accepted = 1;
    self->needs_keyframe = 0;
    self->packets = self->octets = 0;
    self->clock_rate = clock_rate;
    self->has_source = self->sequence_seen = self->timestamp_seen = 0;
    self->sequence_offset = self->timestamp_offset = self->highest_in = 0;
    self->last_out_sequence = first_sequence - 1;
    self->last_out_timestamp = first_timestamp;
    self->last_now = 0.0;
    self->expecting = 0;
    self->vp8 = self->vp8_seen = self->vp8_rebase = 0;
    self->picture_offset = self->last_picture = 0;
    self->tl0_offset = self->last_tl0 = self->keyidx_offset = self->last_keyidx = 0;
    memset(self->sent, 0, sizeof(self->sent));
    self->twcc_at = -1;
    self->rtx_payload_type = -1;
    self->rtx_ssrc = 0;
    self->rtx_sequence = 0;
    self->padding_packets = self->padding_octets = 0;
    return 0;
}

/* The candidate nearest the highest value seen (RFC 3550 A.1); sfu/munger.py Unwrapper. */
static int64_t unwrap(int64_t *highest, char *seen, int64_t value, int bits) {
    if (!*seen) {
        *seen = 1;
        *highest = value;
        return value;
    }
    int64_t modulus = (int64_t)1 << bits;
    int64_t delta = (value - *highest) & (modulus - 1);
    if (delta >= modulus / 2) {
        delta -= modulus;
    }
    int64_t extended = *highest + delta;
    if (extended > *highest) {
        *highest = extended;
    }
    return extended;
}

/* A new publisher SSRC continues the outgoing numbering (RtpMunger._switch_source). */
static void switch_source(DownTrackCore *t, uint16_t sequence, uint32_t timestamp, uint32_t ssrc,
                          double now) {
    t->has_source = 1;
    t->source = ssrc;
    t->sequence_seen = t->timestamp_seen = 0;
    double elapsed = t->last_now != 0.0 ? now - t->last_now : 0.0;
    int64_t ticks = (int64_t)(elapsed * t->clock_rate);
    if (ticks < 1) {
        ticks = 1;
    }
    t->sequence_offset = t->last_out_sequence + 1 - sequence;
    t->timestamp_offset = t->last_out_timestamp + ticks - timestamp;
    t->vp8_rebase = t->vp8_seen;
    if (t->expecting && t->expected_source == ssrc) {
        /* Sender Reports map the new stream onto the old one's timeline: this packet should
         * go out at expected_out (plus its distance from expected_in), taken in 64 bits nearest
         * the wall clock's estimate, when it does not run backwards and stays within a second
         * of that estimate. */
        int64_t estimate = t->last_out_timestamp + ticks;
        uint32_t wanted = t->expected_out + (timestamp - t->expected_in);
        int64_t drift = (int32_t)(wanted - (uint32_t)estimate);
        if (estimate + drift > t->last_out_timestamp && drift < t->clock_rate &&
            drift > -t->clock_rate) {
            t->timestamp_offset = estimate + drift - timestamp;
        }
    }
    t->expecting = 0;
    t->highest_in = sequence;
    t->source_floor = sequence;
}

/* RtpMunger.translate: 0 to drop the packet. */
static int translate(DownTrackCore *t, uint16_t sequence, uint32_t timestamp, uint32_t ssrc,
                     double now, uint16_t *sequence_out, uint32_t *timestamp_out) {
    if (!t->has_source || ssrc != t->source) {
        switch_source(t, sequence, timestamp, ssrc, now);
    }
    int64_t extended_sequence = unwrap(&t->highest_sequence, &t->sequence_seen, sequence, 16);
    int64_t extended_timestamp = unwrap(&t->highest_timestamp, &t->timestamp_seen, timestamp, 32);
    if (extended_sequence > t->highest_in) {
        t->highest_in = extended_sequence;
    } else if (extended_sequence <= t->highest_in - reorder_window ||
               extended_sequence < t->source_floor) {
        return 0;
    }
    int64_t out_sequence = extended_sequence + t->sequence_offset;
    int64_t out_timestamp = extended_timestamp + t->timestamp_offset;
    if (out_sequence > t->last_out_sequence) {
        t->last_out_sequence = out_sequence;
        t->last_out_timestamp = out_timestamp;
        t->last_now = now;
    }
    *sequence_out = (uint16_t)out_sequence;
    *timestamp_out = (uint32_t)out_timestamp;
    return 1;
}

/* RFC 2198: the primary block of a RED payload (protocol/rtp.py red_primary); 0 if malformed. */
static int red_primary(const uint8_t *data, Py_ssize_t *start, Py_ssize_t end, int *type) {
    Py_ssize_t index = *start;
    Py_ssize_t redundant = 0;
    while (index < end && (data[index] & 0x80)) {
        if (index + 4 > end) {
            return 0;
        }
        redundant += ((data[index + 2] & 0x03) << 8) | data[index + 3];
        index += 4;
    }
    if (index >= end || index + 1 + redundant > end) {
        return 0;
    }
    *type = data[index] & 0x7F;
    *start = index + 1 + redundant;
    return 1;
}

typedef struct {
    const uint8_t *data;
    Py_ssize_t start, end;
    uint16_t sequence;
    uint32_t timestamp, ssrc;
    double now;
    int marker; /* 1: set the marker bit (the last packet of the layers a subscriber gets) */
    int out_sequence; /* >= 0: a retransmission, sent again under the number it had */
} incoming_t;

/* Rewrites the VP8 payload descriptor at payload[0..length) in place: picture id, TL0PICIDX and
 * KEYIDX shifted so they continue from the last source's (sfu/fanout.py munge_vp8). newest:
 * this packet is the newest sent, so its values are the ones the next source continues. */
static void munge_vp8(DownTrackCore *t, uint8_t *payload, Py_ssize_t length, int newest) {
    if (length < 2 || !(payload[0] & 0x80)) {
        return; /* no extended control bits: nothing to munge */
    }
    uint8_t bits = payload[1];
    Py_ssize_t offset = 2;
    int picture_at = -1, wide = 0, tl0_at = -1, keyidx_at = -1;
    if (bits & 0x80) { /* I: picture id, 7 or 15 bits (M) */
        picture_at = (int)offset;
        wide = offset < length && (payload[offset] & 0x80);
        offset += wide ? 2 : 1;
    }
    if (bits & 0x40) { /* L: TL0PICIDX */
        tl0_at = (int)offset++;
    }
    if (bits & 0x30) { /* T or K: TID, Y, KEYIDX in one byte */
        if (bits & 0x10) {
            keyidx_at = (int)offset;
        }
        offset++;
    }
    if (offset > length) {
        return; /* a descriptor cut short: left as it is */
    }
    uint16_t mask = wide ? 0x7FFF : 0x7F;
    uint16_t picture = 0;
    if (picture_at >= 0) {
        picture = wide ? (uint16_t)(((payload[picture_at] & 0x7F) << 8) | payload[picture_at + 1])
                       : (uint16_t)(payload[picture_at] & 0x7F);
    }
    uint8_t tl0 = tl0_at >= 0 ? payload[tl0_at] : 0;
    uint8_t keyidx = keyidx_at >= 0 ? (payload[keyidx_at] & 0x1F) : 0;
    if (t->vp8_rebase) {
        t->picture_offset = (uint16_t)(t->last_picture + 1 - picture);
        t->tl0_offset = (uint8_t)(t->last_tl0 + 1 - tl0);
        t->keyidx_offset = (uint8_t)(t->last_keyidx + 1 - keyidx);
        t->vp8_rebase = 0;
    }
    picture = (uint16_t)(picture + t->picture_offset) & mask;
    tl0 = (uint8_t)(tl0 + t->tl0_offset);
    keyidx = (uint8_t)(keyidx + t->keyidx_offset) & 0x1F;
    if (picture_at >= 0 && wide) {
        payload[picture_at] = 0x80 | (uint8_t)(picture >> 8);
        payload[picture_at + 1] = (uint8_t)(picture & 0xFF);
    } else if (picture_at >= 0) {
        payload[picture_at] = (uint8_t)picture;
    }
    if (tl0_at >= 0) {
        payload[tl0_at] = tl0;
    }
    if (keyidx_at >= 0) {
        payload[keyidx_at] = (payload[keyidx_at] & 0xE0) | keyidx;
    }
    if (newest) {
        t->vp8_seen = 1;
        t->last_picture = picture;
        t->last_tl0 = tl0;
        t->last_keyidx = keyidx;
    }
}

/* The fixed header and our extension block (with the transport-wide number stamped when
 * negotiated); flags: 0x20 for padding. */
static void write_header(DownTrackCore *t, uint8_t *out, uint8_t second_byte, uint16_t sequence,
                         uint32_t timestamp, uint32_t ssrc, uint8_t flags, double now,
                         Py_ssize_t size) {
    Py_ssize_t extension_length = PyBytes_GET_SIZE(t->extension);
    out[0] = 0x80 | flags | (extension_length ? 0x10 : 0);
    out[1] = second_byte;
    out[2] = sequence >> 8;
    out[3] = sequence & 0xFF;
    out[4] = timestamp >> 24;
    out[5] = (timestamp >> 16) & 0xFF;
    out[6] = (timestamp >> 8) & 0xFF;
    out[7] = timestamp & 0xFF;
    out[8] = ssrc >> 24;
    out[9] = (ssrc >> 16) & 0xFF;
    out[10] = (ssrc >> 8) & 0xFF;
    out[11] = ssrc & 0xFF;
    memcpy(out + 12, PyBytes_AS_STRING(t->extension), (size_t)extension_length);
    if (t->twcc_at >= 0 && t->twcc_at + 2 <= extension_length && t->sink->twcc != NULL) {
        stamp_twcc(t->sink, out + 12 + t->twcc_at, now, size);
    }
}

/* The subscriber's plaintext packet in out; its length, or 0 to skip this downtrack. */
static Py_ssize_t write_packet(DownTrackCore *t, const incoming_t *in, uint8_t *out,
                               Py_ssize_t *payload_length) {
    if (!t->enabled || !t->bound) {
        return 0;
    }
    Py_ssize_t start = in->start;
    int type = in->data[1] & 0x7F;
    if (type == t->red_payload_type && !t->red_accepted &&
        !red_primary(in->data, &start, in->end, &type)) {
        return 0; /* a subscriber that refused RED gets primary blocks only */
    }
    uint16_t sequence;
    uint32_t timestamp;
    if (!translate(t, in->sequence, in->timestamp, in->ssrc, in->now, &sequence, &timestamp)) {
        return 0;
    }
    if (in->out_sequence >= 0) {
        sequence = (uint16_t)in->out_sequence;
    }
    sent_t *record = &t->sent[sequence & (SENT_RING - 1)];
    record->out = sequence;
    record->in = in->sequence;
    record->ssrc = in->ssrc;
    record->used = 1;
    record->marker = (in->data[1] & 0x80) || in->marker;
    Py_ssize_t extension_length = PyBytes_GET_SIZE(t->extension);
    /* A retransmission goes on the RTX stream when there is one: its own numbering, the
     * original sequence number first in the payload (RFC 4588 4). */
    int rtx = in->out_sequence >= 0 && t->rtx_payload_type >= 0;
    Py_ssize_t header_length = 12 + extension_length + (rtx ? 2 : 0);
    Py_ssize_t size = header_length + (in->end - start);
    if (size > max_plaintext) {
        return 0; /* the Python path's protector refuses these too */
    }
    uint8_t marker_bit = (in->data[1] & 0x80) | (in->marker ? 0x80 : 0);
    uint16_t sequence_sent = sequence;
    if (rtx) {
        sequence_sent = t->rtx_sequence++;
    }
    write_header(t, out, marker_bit | (rtx ? t->rtx_payload_type : t->payload_types[type]),
                 sequence_sent, timestamp, rtx ? t->rtx_ssrc : t->ssrc_out, 0, in->now, size);
    if (rtx) {
        out[12 + extension_length] = sequence >> 8;
        out[13 + extension_length] = sequence & 0xFF;
    }
    memcpy(out + header_length, in->data + start, (size_t)(in->end - start));
    if (t->vp8) {
        int newest = !rtx && (uint16_t)t->last_out_sequence == sequence;
        munge_vp8(t, out + header_length, in->end - start, newest);
    }
    *payload_length = in->end - start;
    return size;
}

/* A padding-only packet on the RTX stream (probing for bandwidth, as libwebrtc pads): no
 * payload, size bytes of padding whose last byte counts them (RFC 3550 5.1). */
static Py_ssize_t write_padding(DownTrackCore *t, int padding, double now, uint8_t *out) {
    if (!t->bound || t->rtx_payload_type < 0 || !t->has_source) {
        return 0;
    }
    Py_ssize_t extension_length = PyBytes_GET_SIZE(t->extension);
    Py_ssize_t size = 12 + extension_length + padding;
    write_header(t, out, (uint8_t)t->rtx_payload_type, t->rtx_sequence++,
                 (uint32_t)t->last_out_timestamp, t->rtx_ssrc, 0x20, now, size);
    memset(out + 12 + extension_length, 0, (size_t)padding);
    out[size - 1] = (uint8_t)padding;
    return size;
}

/* ---- the batch: protected datagrams waiting for one sendmmsg per socket ------------------ */
static uint8_t slots[MAX_BATCH][SLOT_SIZE];
static struct mmsghdr batch_messages[MAX_BATCH];
static struct iovec batch_vectors[MAX_BATCH];
static Sink *batch_sinks[MAX_BATCH]; /* owned until the flush: a Python send may drop others */
static int batch_count = 0;
static int fanout_busy = 0;

/* Hands the batch to the kernel, one sendmmsg per run of datagrams on the same socket; what it
 * does not take goes to the sinks' spill (the event loop's own send, which buffers or reports).
 * -1 with an exception set when a spill raised. */
static int flush_batch(void) {
    int status = 0;
    int index = 0;
    while (index < batch_count) {
        int fd = batch_sinks[index]->fd;
        int run = 1;
        while (index + run < batch_count && batch_sinks[index + run]->fd == fd) {
            run++;
        }
        int sent = sendmmsg(fd, &batch_messages[index], (unsigned int)run, MSG_DONTWAIT);
        if (sent < 0) {
            sent = 0;
        }
        for (int i = index + sent; i < index + run && status == 0; i++) {
            Sink *sink = batch_sinks[i];
            /* Held while called: the callback may clear the sink's own references. */
            PyObject *spill = sink->spill, *address = sink->address;
            if (spill == NULL || address == NULL) {
                continue; /* the fast path was cleared by an earlier spill: drop, as a loss */
            }
            Py_INCREF(spill);
            Py_INCREF(address);
            PyObject *datagram = PyBytes_FromStringAndSize((const char *)slots[i],
                                                           (Py_ssize_t)batch_vectors[i].iov_len);
            PyObject *result = datagram == NULL
                                   ? NULL
                                   : PyObject_CallFunctionObjArgs(spill, datagram, address, NULL);
            Py_XDECREF(datagram);
            Py_DECREF(spill);
            Py_DECREF(address);
            if (result == NULL) {
                status = -1;
            }
            Py_XDECREF(result);
        }
        index += run;
    }
    for (int i = 0; i < batch_count; i++) {
        Py_DECREF(batch_sinks[i]);
    }
    batch_count = 0;
    return status;
}

/* The downtrack's own libsrtp session, asked of its sink the first time it has one to give
 * (Sink.set_sessions): 1 to go on (with or without one), 0 when the downtrack lost its sink
 * meanwhile, -1 with an exception set. */
static int attach_session(DownTrackCore *t, Sink *sink) {
    PyObject *session_for = sink->session_for;
    Py_INCREF(sink); /* held while called: the callback may clear the downtrack */
    Py_INCREF(session_for);
    PyObject *result = PyObject_CallOneArg(session_for, (PyObject *)t);
    Py_DECREF(session_for);
    int status = 1;
    unsigned long long address = 0;
    PyObject *keepalive = NULL;
    if (result == NULL) {
        status = -1;
    } else if (result != Py_None) {
        if (!PyArg_ParseTuple(result, "KO", &address, &keepalive) || address == 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "session_for gave no libsrtp context");
            }
            status = -1;
        } else if (t->sink != sink) {
            status = 0;
        } else {
            Py_INCREF(keepalive);
            Py_XSETREF(t->keepalive, keepalive);
            t->context = (void *)(uintptr_t)address;
        }
    }
    Py_XDECREF(result);
    Py_DECREF(sink);
    return status;
}

/* Hands a datagram to a Python send (no fast path: before the keys, or over ICE-TCP):
 * 1 sent, 0 dropped, -1 with an exception set. */
static int call_send(PyObject *send, uint8_t *data, int length) {
    Py_INCREF(send); /* held while called: the callback may clear the sink */
    PyObject *view = PyMemoryView_FromMemory((char *)data, length, PyBUF_READ);
    PyObject *result = view == NULL ? NULL : PyObject_CallOneArg(send, view);
    Py_XDECREF(view);
    Py_DECREF(send);
    if (result == NULL) {
        return -1;
    }
    int sent = PyObject_IsTrue(result);
    Py_DECREF(result);
    return sent;
}

/* Queues a protected datagram for the next sendmmsg: 1, or -1 with an exception set. */
static int queue_datagram(Sink *sink, uint8_t *out, int length) {
    batch_vectors[batch_count].iov_base = out;
    batch_vectors[batch_count].iov_len = (size_t)length;
    struct msghdr *header = &batch_messages[batch_count].msg_hdr;
    memset(&batch_messages[batch_count], 0, sizeof(batch_messages[batch_count]));
    header->msg_name = &sink->sockaddr;
    header->msg_namelen = sink->sockaddr_length;
    header->msg_iov = &batch_vectors[batch_count];
    header->msg_iovlen = 1;
    Py_INCREF(sink);
    batch_sinks[batch_count++] = sink;
    return 1;
}

/* One packet to one downtrack, a forwarded one (in) or padding (padding bytes): 1 sent (or
 * queued), 0 skipped, -1 with an exception set. Protected with the downtrack's own session
 * once it has one (then always, so a stream's packet index never restarts), else with the
 * transport's; sent by the fast path when the transport has one, else through Python. */
static int emit(DownTrackCore *t, const incoming_t *in, int padding, double now) {
    Sink *sink = t->sink;
    Py_ssize_t payload_length = 0;
    if (sink == NULL || t->extension == NULL || (sink->context == NULL && sink->send == NULL)) {
        return 0; /* never initialised, or emptied by the garbage collector breaking a cycle */
    }
    if (t->context == NULL && sink->session_for != NULL) {
        int attached = attach_session(t, sink);
        if (attached <= 0) {
            return attached;
        }
    }
    if (sink->context != NULL && batch_count == MAX_BATCH && flush_batch() != 0) {
        return -1;
    }
    int fast = sink->context != NULL; /* (a spill in that flush may have ended it) */
    void *context = t->context != NULL ? t->context : sink->context;
    static uint8_t alone[SLOT_SIZE];
    uint8_t *out = fast ? slots[batch_count] : alone;
    int length = (int)(in != NULL ? write_packet(t, in, out, &payload_length)
                                  : write_padding(t, padding, now, out));
    if (length == 0) {
        return 0;
    }
    if (context != NULL && srtp_protect_function(context, out, &length) != 0) {
        protect_failure_count++;
        return 0;
    }
    /* No session at all (no keys yet, or none per downtrack): the Python send protects. */
    PyObject *python_send = context != NULL ? sink->send_protected : sink->send;
    int sent = fast                  ? queue_datagram(sink, out, length)
               : python_send != NULL ? call_send(python_send, out, length)
                                     : 0;
    if (sent <= 0) {
        return sent;
    }
    if (in != NULL) {
        t->packets++;
        t->octets += (unsigned long long)payload_length;
    } else {
        t->padding_packets++;
        t->padding_octets += (unsigned long long)padding;
    }
    return 1;
}

static int forward_one(DownTrackCore *t, const incoming_t *in) {
    return emit(t, in, 0, in->now);
}

/* The packet arguments of fanout and forward: (packet, start, end, sequence, timestamp, ssrc,
 * now), then the downtracks when targets is not NULL, then an optional marker flag. Takes the
 * buffer and claims the batch; -1 with an exception set (and nothing held) on bad arguments or
 * a re-entrant call. */
static int begin_forwarding(PyObject *args, Py_buffer *buffer, incoming_t *in,
                            PyObject **targets) {
    unsigned int sequence;
    unsigned long timestamp, ssrc;
    in->marker = 0;
    in->out_sequence = -1;
    int parsed = targets != NULL
                     ? PyArg_ParseTuple(args, "y*nnIkkdO!|p", buffer, &in->start, &in->end,
                                        &sequence, &timestamp, &ssrc, &in->now, &PyDict_Type,
                                        targets, &in->marker)
                     : PyArg_ParseTuple(args, "y*nnIkkd|pi", buffer, &in->start, &in->end,
                                        &sequence, &timestamp, &ssrc, &in->now, &in->marker,
                                        &in->out_sequence);
    if (parsed && in->out_sequence > 65535) {
        PyErr_SetString(PyExc_ValueError, "out_sequence is a 16-bit sequence number");
        parsed = 0;
    }
    if (!parsed) {
        return -1;
    }
    if (buffer->len < 12 || in->start < 12 || in->start > in->end || in->end > buffer->len) {
        PyBuffer_Release(buffer);
        PyErr_SetString(PyExc_ValueError, "payload bounds outside the packet");
        return -1;
    }
    if (fanout_busy) {
        PyBuffer_Release(buffer);
        PyErr_SetString(PyExc_RuntimeError, "forwarding is not re-entrant");
        return -1;
    }
    fanout_busy = 1;
    in->data = buffer->buf;
    in->sequence = (uint16_t)sequence;
    in->timestamp = (uint32_t)timestamp;
    in->ssrc = (uint32_t)ssrc;
    return 0;
}

/* Sends what is queued and releases what begin_forwarding took: the keyframe flag as a bool,
 * or NULL when something failed on the way. */
static PyObject *end_forwarding(int status, int keyframe, Py_buffer *buffer) {
    if (flush_batch() != 0) {
        status = -1;
    }
    fanout_busy = 0;
    PyBuffer_Release(buffer);
    if (status < 0) {
        return NULL;
    }
    return PyBool_FromLong(keyframe);
}

/* Whether the downtrack's first packet went out and a keyframe should be asked for. */
static int keyframe_due(DownTrackCore *t, int forwarded) {
    if (forwarded == 1 && t->needs_keyframe) {
        t->needs_keyframe = 0;
        return 1;
    }
    return 0;
}

static PyTypeObject DownTrackCoreType;

static PyObject *fanout(PyObject *self, PyObject *args) {
    Py_buffer buffer;
    incoming_t in;
    PyObject *targets;
    if (begin_forwarding(args, &buffer, &in, &targets) != 0) {
        return NULL;
    }
    int keyframe = 0, status = 0;
    Py_ssize_t position = 0, size = PyDict_GET_SIZE(targets);
    PyObject *key, *value;
    while (PyDict_Next(targets, &position, &key, &value)) {
        if (!PyObject_TypeCheck(value, &DownTrackCoreType)) {
            PyErr_SetString(PyExc_TypeError, "downtracks must be DownTrackCore instances");
            status = -1;
            break;
        }
        Py_INCREF(value);
        status = forward_one((DownTrackCore *)value, &in);
        keyframe |= keyframe_due((DownTrackCore *)value, status);
        Py_DECREF(value);
        if (status < 0 || PyDict_GET_SIZE(targets) != size) {
            break; /* an error, or a Python send changed the room: the rest miss this packet */
        }
    }
    return end_forwarding(status, keyframe, &buffer);
}

/* A packet a downtrack does not get (a layer above the one it wants): the numbering closes
 * over it, so the subscriber sees no gap to NACK (LiveKit's munger drops such packets the same
 * way). Only the newest packet of the stream it is on counts; anything else changes nothing. */
static void skip_one(DownTrackCore *t, uint16_t sequence, uint32_t ssrc) {
    if (!t->has_source || t->source != ssrc) {
        return;
    }
    int64_t extended = unwrap(&t->highest_sequence, &t->sequence_seen, sequence, 16);
    if (extended > t->highest_in) {
        t->highest_in = extended;
        t->sequence_offset -= 1;
    }
}

static PyObject *skip(PyObject *self, PyObject *args) {
    unsigned int sequence;
    unsigned long ssrc;
    PyObject *targets;
    if (!PyArg_ParseTuple(args, "IkO!", &sequence, &ssrc, &PyDict_Type, &targets)) {
        return NULL;
    }
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(targets, &position, &key, &value)) {
        if (!PyObject_TypeCheck(value, &DownTrackCoreType)) {
            PyErr_SetString(PyExc_TypeError, "downtracks must be DownTrackCore instances");
            return NULL;
        }
        skip_one((DownTrackCore *)value, (uint16_t)sequence, (uint32_t)ssrc);
    }
    Py_RETURN_NONE;
}

static PyObject *DownTrackCore_forward(DownTrackCore *self, PyObject *args) {
    Py_buffer buffer;
    incoming_t in;
    if (begin_forwarding(args, &buffer, &in, NULL) != 0) {
        return NULL;
    }
    int status = forward_one(self, &in);
    return end_forwarding(status, keyframe_due(self, status), &buffer);
}

static PyObject *DownTrackCore_expect_source(DownTrackCore *self, PyObject *args) {
    unsigned long ssrc, timestamp_in, timestamp_out;
    if (!PyArg_ParseTuple(args, "kkk", &ssrc, &timestamp_in, &timestamp_out)) {
        return NULL;
    }
    self->expecting = 1;
    self->expected_source = (uint32_t)ssrc;
    self->expected_in = (uint32_t)timestamp_in;
    self->expected_out = (uint32_t)timestamp_out;
    Py_RETURN_NONE;
}

static PyObject *DownTrackCore_sent(DownTrackCore *self, PyObject *arg) {
    long sequence = PyLong_AsLong(arg);
    if (sequence == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const sent_t *record = &self->sent[(uint16_t)sequence & (SENT_RING - 1)];
    if (sequence < 0 || sequence > 65535 || !record->used || record->out != sequence) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(IkO)", (unsigned int)record->in, (unsigned long)record->ssrc,
                         record->marker ? Py_True : Py_False);
}

static PyObject *DownTrackCore_translate_timestamp(DownTrackCore *self, PyObject *arg) {
    long long timestamp = PyLong_AsLongLong(arg);
    if (timestamp == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromUnsignedLong((unsigned long)((uint32_t)(timestamp + self->timestamp_offset)));
}

static PyObject *DownTrackCore_set_rtx(DownTrackCore *self, PyObject *args) {
    unsigned long ssrc;
    int payload_type;
    unsigned int first_sequence;
    if (!PyArg_ParseTuple(args, "kiI", &ssrc, &payload_type, &first_sequence)) {
        return NULL;
    }
    if (payload_type < -1 || payload_type > 127) {
        PyErr_SetString(PyExc_ValueError, "payload types are 0-127 (-1: no RTX)");
        return NULL;
    }
    self->rtx_ssrc = (uint32_t)ssrc;
    self->rtx_payload_type = payload_type;
    self->rtx_sequence = (uint16_t)first_sequence;
    Py_RETURN_NONE;
}

/* pad(count, bytes, now) -> packets sent: padding-only packets on the RTX stream. */
static PyObject *DownTrackCore_pad(DownTrackCore *self, PyObject *args) {
    int count, padding;
    double now;
    if (!PyArg_ParseTuple(args, "iid", &count, &padding, &now)) {
        return NULL;
    }
    if (count < 0 || count > MAX_BATCH || padding < 1 || padding > 255) {
        PyErr_SetString(PyExc_ValueError, "0-256 packets of 1-255 padding bytes");
        return NULL;
    }
    if (fanout_busy) {
        PyErr_SetString(PyExc_RuntimeError, "forwarding is not re-entrant");
        return NULL;
    }
    fanout_busy = 1;
    int sent = 0, status = 0;
    Py_INCREF(self);
    while (sent < count) {
        status = emit(self, NULL, padding, now);
        if (status <= 0) {
            break;
        }
        sent++;
    }
    if (flush_batch() != 0) {
        status = -1;
    }
    Py_DECREF(self);
    fanout_busy = 0;
    if (status < 0) {
        return NULL;
    }
    return PyLong_FromLong(sent);
}

static PyMethodDef DownTrackCore_methods[] = {
    {"set_rtx", (PyCFunction)DownTrackCore_set_rtx, METH_VARARGS,
     "set_rtx(ssrc, payload type or -1, first sequence number): the RTX stream"},
    {"pad", (PyCFunction)DownTrackCore_pad, METH_VARARGS,
     "pad(count, padding bytes, now) -> padding-only packets sent on the RTX stream"},
    {"forward", (PyCFunction)DownTrackCore_forward, METH_VARARGS,
     "forward(packet, start, end, sequence, timestamp, ssrc, now[, marker, out_sequence])"
     " -> keyframe due"},
    {"expect_source", (PyCFunction)DownTrackCore_expect_source, METH_VARARGS,
     "expect_source(ssrc, timestamp in, timestamp out): where the next source's time goes"},
    {"sent", (PyCFunction)DownTrackCore_sent, METH_O,
     "sent(our sequence number) -> (the publisher's, its SSRC, marker) or None"},
    {"translate_timestamp", (PyCFunction)DownTrackCore_translate_timestamp, METH_O,
     "a publisher timestamp in the subscriber's timeline"},
    {NULL, NULL, 0, NULL},
};

static PyObject *DownTrackCore_get_own_session(DownTrackCore *self, void *closure) {
    return PyBool_FromLong(self->context != NULL);
}

static PyGetSetDef DownTrackCore_getset[] = {
    {"own_session", (getter)DownTrackCore_get_own_session, NULL,
     "whether it protects with a libsrtp session of its own", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef DownTrackCore_members[] = {
    {"enabled", T_BOOL, offsetof(DownTrackCore, enabled), 0, "forwarding on"},
    {"bound", T_BOOL, offsetof(DownTrackCore, bound), 0, "the subscriber has negotiated it"},
    {"red_accepted", T_BOOL, offsetof(DownTrackCore, red_accepted), 0, "subscriber kept RED"},
    {"vp8", T_BOOL, offsetof(DownTrackCore, vp8), 0, "munge VP8 payload descriptors"},
    {"needs_keyframe", T_BOOL, offsetof(DownTrackCore, needs_keyframe), 0,
     "ask for a keyframe when the first packet goes out"},
    {"packets", T_ULONGLONG, offsetof(DownTrackCore, packets), READONLY, "packets sent"},
    {"octets", T_ULONGLONG, offsetof(DownTrackCore, octets), READONLY, "payload bytes sent"},
    {"padding_packets", T_ULONGLONG, offsetof(DownTrackCore, padding_packets), READONLY,
     "padding-only packets sent"},
    {"padding_octets", T_ULONGLONG, offsetof(DownTrackCore, padding_octets), READONLY,
     "padding bytes sent"},
    {"twcc_at", T_INT, offsetof(DownTrackCore, twcc_at), 0,
     "offset of the transport-wide number in the extension block, -1 for none"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject DownTrackCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastsend.DownTrackCore",
    .tp_basicsize = sizeof(DownTrackCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)DownTrackCore_init,
    .tp_dealloc = (destructor)DownTrackCore_dealloc,
    .tp_traverse = (traverseproc)DownTrackCore_traverse,
    .tp_clear = (inquiry)DownTrackCore_clear,
    .tp_methods = DownTrackCore_methods,
    .tp_members = DownTrackCore_members,
    .tp_getset = DownTrackCore_getset,
};

/* extension_u16(packet, id) -> the 16-bit value of that RFC 8285 element, or -1 (the
 * transport-wide number of each received packet; protocol/rtp.py extension_u16 is the
 * reference). */
static PyObject *extension_u16(PyObject *self, PyObject *args) {
    Py_buffer buffer;
    int ident;
    if (!PyArg_ParseTuple(args, "y*i", &buffer, &ident)) {
        return NULL;
    }
    const uint8_t *data = buffer.buf;
    Py_ssize_t length = buffer.len;
    long found_value = -1;
    if (length >= 12 && (data[0] & 0x10)) {
        Py_ssize_t start = 12 + 4 * (data[0] & 0x0F);
        if (length >= start + 4) {
            int one_byte = data[start] == 0xBE && data[start + 1] == 0xDE;
            int two_byte = data[start] == 0x10 && !(data[start + 1] & 0xF0);
            Py_ssize_t end = start + 4 + 4 * ((data[start + 2] << 8) | data[start + 3]);
            if (end > length) {
                end = length;
            }
            Py_ssize_t index = start + 4;
            while ((one_byte || two_byte) && index < end) {
                uint8_t first = data[index];
                if (first == 0) {
                    index++;
                    continue;
                }
                int found, size;
                if (one_byte) {
                    found = first >> 4;
                    size = (first & 0x0F) + 1;
                    index += 1;
                    if (found == 15) {
                        break;
                    }
                } else if (index + 1 < end) {
                    found = first;
                    size = data[index + 1];
                    index += 2;
                } else {
                    break;
                }
                if (found == ident) {
                    if (size == 2 && index + 2 <= length) {
                        found_value = (data[index] << 8) | data[index + 1];
                    }
                    break;
                }
                index += size;
            }
        }
    }
    PyBuffer_Release(&buffer);
    return PyLong_FromLong(found_value);
}

static PyMethodDef methods[] = {
    {"extension_u16", extension_u16, METH_VARARGS,
     "extension_u16(packet, id) -> that header extension's 16-bit value, or -1"},
    {"set_limits", set_limits, METH_VARARGS,
     "set_limits(reorder window, longest plaintext packet): the Python path's constants"},
    {"protect_failures", protect_failures, METH_NOARGS,
     "packets libsrtp refused to protect since start"},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, [(data, (host, port)), ...]) -> datagrams the kernel took"},
    {"set_srtp_protect", set_srtp_protect, METH_VARARGS,
     "set_srtp_protect(address of srtp_protect, longest plaintext packet)"},
    {"fanout", fanout, METH_VARARGS,
     "fanout(packet, start, end, sequence, timestamp, ssrc, now, downtracks[, marker])"
     " -> keyframe due"},
    {"skip", skip, METH_VARARGS,
     "skip(sequence, ssrc, downtracks): a packet they do not get leaves no gap"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastsend", "the forwarding path's fan-out and sendmmsg(2)", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fastsend(void) {
    if (PyType_Ready(&SinkType) < 0 || PyType_Ready(&DownTrackCoreType) < 0) {
        return NULL;
    }
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) {
        return NULL;
    }
    Py_INCREF(&SinkType);
    Py_INCREF(&DownTrackCoreType);
    if (PyModule_AddObject(created, "Sink", (PyObject *)&SinkType) < 0 ||
        PyModule_AddObject(created, "DownTrackCore", (PyObject *)&DownTrackCoreType) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
