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
#include <string.h>
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

static PyMethodDef methods[] = {
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, [(data, (host, port)), ...]) -> datagrams the kernel took"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastsend", "sendmmsg(2) for the forwarding path", -1, methods,
};

PyMODINIT_FUNC PyInit__fastsend(void) { return PyModule_Create(&module); }
