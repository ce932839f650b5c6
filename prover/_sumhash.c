/*
 * prover._sumhash: SHA-256 of many sum tree messages in one call.
 *
 * The C half of prover/tree.py's hashing, for trees whose digest is SHA-256
 * (every record version so far). Each call hashes whole arrays of messages
 * with OpenSSL's SHA-256, where Python pays about 0.45 us of object and
 * context overhead per message. prover/tree.py falls back to hashlib when
 * this module is not built (it is optional: setup.py), and
 * tests/prover/test_sumhash.py checks every result against hashlib.
 *
 * Layouts are prover/tree.py's: a level is a C-contiguous (m, 97) uint8
 * array whose row r is "node tag || record(2r) || record(2r+1)", a record
 * being "hash[32] || sum u128 big-endian". Row p of level l is the message
 * of node p of level l+1, which lives at row p >> 1, column 1 + 48 * (p & 1)
 * of level l+1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The one-shot SHA256() of OpenSSL 3 looks the algorithm up by name on each
   call (about 0.8 us); the low-level calls hash directly (about 0.13 us for a
   97-byte message), and OpenSSL 3 still provides them. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#define DIGEST 32
#define RECORD 48                   /* hash[32] || sum u128 */
#define ROW (1 + 2 * RECORD)        /* node tag || left record || right record */
#define PREFETCH 8                  /* parents ahead whose rows are asked for */
#define RELEASE_GIL_FROM 1024       /* messages per call from which other threads run */

static void
sha256(const unsigned char *message, size_t size, unsigned char *out)
{
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, message, size);
    SHA256_Final(out, &ctx);
}

static uint64_t
load_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static void
store_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}

/* Get a C-contiguous 2-D buffer of bytes with rows of `width` bytes (any
   width if 0). Returns 0 on success, -1 with an exception set. */
static int
get_rows(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t width, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->ndim != 2 || view->itemsize != 1
        || (view->format && strcmp(view->format, "B") && strcmp(view->format, "b"))) {
        PyErr_Format(PyExc_ValueError, "%s: a 2-D array of bytes is needed", name);
        PyBuffer_Release(view);
        return -1;
    }
    if (width && view->shape[1] != width) {
        PyErr_Format(PyExc_ValueError, "%s: rows of %zd bytes, not %zd", name, width,
                     view->shape[1]);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(sha256_rows_doc,
"sha256_rows(rows) -> bytes\n\n"
"The SHA-256 digests of the rows of a C-contiguous (k, w) byte array, each\n"
"row one message: k * 32 bytes, row i's digest at 32 * i.");

static PyObject *
sha256_rows(PyObject *self, PyObject *rows_obj)
{
    Py_buffer rows;
    if (get_rows(rows_obj, &rows, 0, 0, "rows") < 0) return NULL;
    Py_ssize_t k = rows.shape[0], w = rows.shape[1];
    PyObject *out = PyBytes_FromStringAndSize(NULL, k * DIGEST);
    if (out != NULL) {
        const unsigned char *in = rows.buf;
        unsigned char *digests = (unsigned char *)PyBytes_AS_STRING(out);
        PyThreadState *state = k >= RELEASE_GIL_FROM ? PyEval_SaveThread() : NULL;
        for (Py_ssize_t i = 0; i < k; i++) sha256(in + i * w, (size_t)w, digests + i * DIGEST);
        if (state != NULL) PyEval_RestoreThread(state);
    }
    PyBuffer_Release(&rows);
    return out;
}

/* Node p of the level above from its message, row p of the level below;
   its record before, to `old` if not NULL. */
static void
hash_parent(const unsigned char *below, unsigned char *above, int64_t p, unsigned char *old)
{
    const unsigned char *message = below + p * ROW;
    unsigned char *record = above + (p >> 1) * ROW + 1 + RECORD * (p & 1);
    const unsigned char *left = message + 1 + DIGEST, *right = left + RECORD;
    uint64_t left_lo = load_be64(left + 8), lo = left_lo + load_be64(right + 8);
    uint64_t hi = load_be64(left) + load_be64(right) + (lo < left_lo);
    if (old != NULL) memcpy(old, record, RECORD);
    sha256(message, ROW, record);
    store_be64(record + DIGEST, hi);
    store_be64(record + DIGEST + 8, lo);
}

/* Scattered parents miss the caches, a few hundred ns each: ask for node p's
   message (up to three cache lines) and record some nodes ahead. */
static void
prefetch_parent(const unsigned char *below, unsigned char *above, int64_t p)
{
    const unsigned char *message = below + p * ROW;
    __builtin_prefetch(message);
    __builtin_prefetch(message + 64);
    __builtin_prefetch(message + ROW - 1);
    __builtin_prefetch(above + (p >> 1) * ROW + 1 + RECORD * (p & 1), 1);
}

PyDoc_STRVAR(hash_parents_doc,
"hash_parents(below, above, parents=None, old=None) -> int\n\n"
"Rehash nodes `parents` of a level from their children: `below` is the\n"
"level's children, (m, 97) uint8; `above` the level's own rows, writable;\n"
"`parents` a 1-D int64 array of node indices in 0..m-1 (None: all m). Each\n"
"node's record is the SHA-256 of its message and the sum of its children's\n"
"sums, which the tree's invariants keep below 2**128. With `old`, a\n"
"writable buffer of 48 bytes per parent, each parent's record before is\n"
"copied there first (a cache line the rehash reads anyway). Returns how\n"
"many nodes it hashed; raises IndexError or ValueError, before any write,\n"
"on an index out of range or a buffer of the wrong size.");

static PyObject *
hash_parents(PyObject *self, PyObject *args)
{
    PyObject *below_obj, *above_obj, *parents_obj = Py_None, *old_obj = Py_None;
    if (!PyArg_ParseTuple(args, "OO|OO:hash_parents", &below_obj, &above_obj, &parents_obj,
                          &old_obj))
        return NULL;
    Py_buffer below, above, parents = {0}, old = {0};
    if (get_rows(below_obj, &below, 0, ROW, "below") < 0) return NULL;
    if (get_rows(above_obj, &above, 1, ROW, "above") < 0) {
        PyBuffer_Release(&below);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t m = below.shape[0], count = m;
    const int64_t *nodes = NULL;
    if (parents_obj != Py_None) {
        if (PyObject_GetBuffer(parents_obj, &parents, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        if (parents.ndim != 1 || parents.itemsize != 8 || parents.format == NULL
            || !strchr("lq", parents.format[strlen(parents.format) - 1])) {
            PyErr_SetString(PyExc_ValueError, "parents: a 1-D int64 array is needed");
            goto done;
        }
        nodes = parents.buf;
        count = parents.shape[0];
    }
    if (old_obj != Py_None) {
        if (PyObject_GetBuffer(old_obj, &old, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto done;
        if (old.len != count * RECORD) {
            PyErr_Format(PyExc_ValueError, "old: %zd bytes, not %d per parent", old.len, RECORD);
            goto done;
        }
    }
    if (m > 2 * above.shape[0]) {
        PyErr_Format(PyExc_ValueError, "above: %zd rows cannot hold %zd nodes", above.shape[0], m);
        goto done;
    }
    for (Py_ssize_t i = 0; nodes != NULL && i < count; i++) {
        if (nodes[i] < 0 || nodes[i] >= m) {
            PyErr_Format(PyExc_IndexError, "parent %lld is outside 0..%zd",
                         (long long)nodes[i], m - 1);
            goto done;
        }
    }
    const unsigned char *in = below.buf;
    unsigned char *out = above.buf, *kept = old.buf;
    PyThreadState *state = count >= RELEASE_GIL_FROM ? PyEval_SaveThread() : NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (nodes != NULL && i + PREFETCH < count) prefetch_parent(in, out, nodes[i + PREFETCH]);
        hash_parent(in, out, nodes ? nodes[i] : i, kept ? kept + i * RECORD : NULL);
    }
    if (state != NULL) PyEval_RestoreThread(state);
    result = PyLong_FromSsize_t(count);
done:
    if (old.obj != NULL) PyBuffer_Release(&old);
    if (parents.obj != NULL) PyBuffer_Release(&parents);
    PyBuffer_Release(&above);
    PyBuffer_Release(&below);
    return result;
}

static PyMethodDef methods[] = {
    {"sha256_rows", sha256_rows, METH_O, sha256_rows_doc},
    {"hash_parents", hash_parents, METH_VARARGS, hash_parents_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "prover._sumhash",
    "SHA-256 of many sum tree messages in one call (see prover/_sumhash.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__sumhash(void)
{
    return PyModule_Create(&module);
}
