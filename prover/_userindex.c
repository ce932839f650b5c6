/*
 * prover._userindex: a ledger's users numbered 0, 1, ... in the order they
 * came, outside Python objects.
 *
 * The C half of prover/users.py (which falls back to a dict and a list when
 * this optional module is not built: setup.py). A Python dict of a million
 * ids costs about 150 bytes per user (the dict's entry, a str and an int
 * object) and three cache misses per lookup; here a user costs its UTF-8
 * bytes plus 40-60 bytes (room to grow included), and a lookup two misses:
 * the table's slot, then the id's bytes.
 *
 * Layout:
 *   arena    the ids back to back, each as "length u8 || UTF-8 bytes";
 *   offsets  offsets[n] is where user n's record starts in the arena;
 *   table    open addressing, linear probing, a power of two at most half
 *            full: each slot holds the high 32 bits of the id's hash (a
 *            filter before comparing bytes), the user's number (EMPTY: a
 *            free slot) and its record's offset.
 * Hashes are CPython's own keyed hash of bytes (the one its dict uses for
 * str keys, randomized per process), so crafted ids cannot pile into one
 * chain any more than they can in a dict.
 *
 * Invariants: ids are distinct, 1-255 bytes; numbers are 0 .. count-1 in
 * the order added; nothing is ever removed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define EMPTY UINT32_MAX
#define MAX_ID 255

typedef struct {
    uint32_t tag;     /* hash >> 32 */
    uint32_t number;  /* EMPTY: free */
    uint64_t offset;  /* the id's record in the arena */
} Slot;

typedef struct {
    PyObject_HEAD
    unsigned char *arena;
    size_t arena_size, arena_room;
    uint64_t *offsets;
    size_t count, offsets_room;
    Slot *table;
    size_t mask;  /* table size - 1 */
} Users;

static uint64_t
hash_id(const char *id, Py_ssize_t size)
{
    return (uint64_t)_Py_HashBytes(id, size);
}

static Slot *
empty_table(size_t size)
{
    Slot *table = PyMem_Malloc(size * sizeof(Slot));
    if (table == NULL) return (Slot *)PyErr_NoMemory();
    for (size_t i = 0; i < size; i++) table[i].number = EMPTY;
    return table;
}

/* The slot of `id`, or the free slot where it would go. */
static Slot *
find(const Users *self, const char *id, Py_ssize_t size, uint64_t hash)
{
    uint32_t tag = (uint32_t)(hash >> 32);
    for (size_t i = hash & self->mask;; i = (i + 1) & self->mask) {
        Slot *slot = &self->table[i];
        if (slot->number == EMPTY) return slot;
        if (slot->tag == tag) {
            const unsigned char *record = self->arena + slot->offset;
            if (record[0] == size && memcmp(record + 1, id, (size_t)size) == 0) return slot;
        }
    }
}

static int
grow_table(Users *self)
{
    size_t size = 2 * (self->mask + 1);
    Slot *table = empty_table(size), *old = self->table;
    if (table == NULL) return -1;
    size_t old_size = self->mask + 1;
    self->table = table;
    self->mask = size - 1;
    for (size_t i = 0; i < old_size; i++) {
        if (old[i].number == EMPTY) continue;
        const unsigned char *record = self->arena + old[i].offset;
        uint64_t hash = hash_id((const char *)record + 1, record[0]);
        *find(self, (const char *)record + 1, record[0], hash) = old[i];
    }
    PyMem_Free(old);
    return 0;
}

static void *
grown(void *buffer, size_t *room, size_t need, size_t item)
{
    if (need <= *room) return buffer;
    size_t more = *room ? *room : 1024;
    while (more < need) more *= 2;
    void *bigger = PyMem_Realloc(buffer, more * item);
    if (bigger == NULL) return PyErr_NoMemory();
    *room = more;
    return bigger;
}

/* Add `id` (not present; `slot` is where it goes) as the next number. */
static int
add(Users *self, Slot *slot, const char *id, Py_ssize_t size, uint64_t hash)
{
    if (self->count >= EMPTY) {
        PyErr_SetString(PyExc_OverflowError, "a ledger holds at most 2**32 - 1 users");
        return -1;
    }
    unsigned char *arena = grown(self->arena, &self->arena_room, self->arena_size + 1 + size, 1);
    if (arena == NULL) return -1;
    self->arena = arena;
    uint64_t *offsets = grown(self->offsets, &self->offsets_room, self->count + 1, sizeof(uint64_t));
    if (offsets == NULL) return -1;
    self->offsets = offsets;
    uint64_t offset = self->arena_size;
    arena[offset] = (unsigned char)size;
    memcpy(arena + offset + 1, id, (size_t)size);
    self->arena_size += 1 + size;
    offsets[self->count] = offset;
    slot->tag = (uint32_t)(hash >> 32);
    slot->number = (uint32_t)self->count;
    slot->offset = offset;
    self->count++;
    if (2 * self->count > self->mask + 1) return grow_table(self);
    return 0;
}

/* The UTF-8 bytes of a user id, or NULL with TypeError or ValueError set. */
static const char *
id_bytes(PyObject *user, Py_ssize_t *size)
{
    if (!PyUnicode_Check(user)) {
        PyErr_Format(PyExc_TypeError, "a user id must be a str, not %.100s",
                     Py_TYPE(user)->tp_name);
        return NULL;
    }
    const char *id = PyUnicode_AsUTF8AndSize(user, size);
    if (id != NULL && (*size < 1 || *size > MAX_ID)) {
        PyErr_Format(PyExc_ValueError, "a user id must be 1-%d bytes of UTF-8, got %zd",
                     MAX_ID, *size);
        return NULL;
    }
    return id;
}

static PyObject *
Users_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || (kwargs != NULL && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "Users() takes no arguments");
        return NULL;
    }
    Users *self = (Users *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->table = empty_table(1024);
    if (self->table == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->mask = 1023;
    return (PyObject *)self;
}

static void
Users_dealloc(Users *self)
{
    PyMem_Free(self->arena);
    PyMem_Free(self->offsets);
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
Users_len(Users *self)
{
    return (Py_ssize_t)self->count;
}

PyDoc_STRVAR(numbers_doc,
"numbers(users) -> bytes\n\n"
"The number of each id of the list `users`, as native int64s; ids not\n"
"known yet are added first, numbered in the order they come. Raises\n"
"TypeError or ValueError, adding none, if an id is not a str of 1-255\n"
"bytes of UTF-8.");

static PyObject *
Users_numbers(Users *self, PyObject *users)
{
    if (!PyList_Check(users)) {
        PyErr_SetString(PyExc_TypeError, "numbers() takes a list of user ids");
        return NULL;
    }
    Py_ssize_t k = PyList_GET_SIZE(users), size;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (id_bytes(PyList_GET_ITEM(users, i), &size) == NULL) return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, k * (Py_ssize_t)sizeof(int64_t));
    if (out == NULL) return NULL;
    int64_t *numbers = (int64_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < k; i++) {
        const char *id = id_bytes(PyList_GET_ITEM(users, i), &size);
        uint64_t hash = hash_id(id, size);
        Slot *slot = find(self, id, size, hash);
        if (slot->number != EMPTY) {
            numbers[i] = slot->number;
        } else if (add(self, slot, id, size, hash) == 0) {  /* may move the table */
            numbers[i] = (int64_t)self->count - 1;
        } else {
            Py_DECREF(out);  /* out of memory: the ids before stay added, unused */
            return NULL;
        }
    }
    return out;
}

PyDoc_STRVAR(get_doc, "get(user) -> int | None\n\nThe number of `user`, or None if not added.");

static PyObject *
Users_get(Users *self, PyObject *user)
{
    Py_ssize_t size;
    const char *id = id_bytes(user, &size);
    if (id == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
        PyErr_Clear();  /* no such id can have been added */
        Py_RETURN_NONE;
    }
    Slot *slot = find(self, id, size, hash_id(id, size));
    if (slot->number == EMPTY) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(slot->number);
}

PyDoc_STRVAR(ids_doc,
"ids(start, stop) -> list[str]\n\n"
"The ids of users start .. stop - 1 (0 <= start <= stop <= len).");

static PyObject *
Users_ids(Users *self, PyObject *args)
{
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "nn:ids", &start, &stop)) return NULL;
    if (start < 0 || stop < start || (size_t)stop > self->count) {
        PyErr_Format(PyExc_IndexError, "users %zd .. %zd are outside 0 .. %zu", start, stop,
                     self->count);
        return NULL;
    }
    PyObject *out = PyList_New(stop - start);
    for (Py_ssize_t n = start; out != NULL && n < stop; n++) {
        const unsigned char *record = self->arena + self->offsets[n];
        PyObject *id = PyUnicode_DecodeUTF8((const char *)record + 1, record[0], "strict");
        if (id == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, n - start, id);
    }
    return out;
}

PyDoc_STRVAR(select_doc,
"select(numbers) -> list[str]\n\n"
"The ids of users `numbers`, a 1-D int64 array of numbers in 0 .. len - 1.");

static PyObject *
Users_select(Users *self, PyObject *numbers_obj)
{
    Py_buffer numbers;
    if (PyObject_GetBuffer(numbers_obj, &numbers, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *out = NULL;
    if (numbers.ndim != 1 || numbers.itemsize != 8 || numbers.format == NULL
        || !strchr("lq", numbers.format[strlen(numbers.format) - 1])) {
        PyErr_SetString(PyExc_ValueError, "numbers: a 1-D int64 array is needed");
        goto done;
    }
    const int64_t *at = numbers.buf;
    Py_ssize_t k = numbers.shape[0];
    for (Py_ssize_t i = 0; i < k; i++) {
        if (at[i] < 0 || (uint64_t)at[i] >= self->count) {
            PyErr_Format(PyExc_IndexError, "no user %lld: %zu users", (long long)at[i],
                         self->count);
            goto done;
        }
    }
    out = PyList_New(k);
    for (Py_ssize_t i = 0; out != NULL && i < k; i++) {
        const unsigned char *record = self->arena + self->offsets[at[i]];
        PyObject *id = PyUnicode_DecodeUTF8((const char *)record + 1, record[0], "strict");
        if (id == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, id);
    }
done:
    PyBuffer_Release(&numbers);
    return out;
}

PyDoc_STRVAR(nbytes_doc, "Bytes held: the arena, the offsets and the table, room included.");

static PyObject *
Users_nbytes(Users *self, void *closure)
{
    return PyLong_FromSize_t(self->arena_room + self->offsets_room * sizeof(uint64_t)
                             + (self->mask + 1) * sizeof(Slot));
}

static PyMethodDef Users_methods[] = {
    {"numbers", (PyCFunction)Users_numbers, METH_O, numbers_doc},
    {"get", (PyCFunction)Users_get, METH_O, get_doc},
    {"ids", (PyCFunction)Users_ids, METH_VARARGS, ids_doc},
    {"select", (PyCFunction)Users_select, METH_O, select_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Users_getset[] = {
    {"nbytes", (getter)Users_nbytes, NULL, nbytes_doc, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Users_as_sequence = {.sq_length = (lenfunc)Users_len};

static PyTypeObject UsersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "prover._userindex.Users",
    .tp_doc = "Users numbered in the order they came (see prover/_userindex.c).",
    .tp_basicsize = sizeof(Users),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Users_new,
    .tp_dealloc = (destructor)Users_dealloc,
    .tp_as_sequence = &Users_as_sequence,
    .tp_methods = Users_methods,
    .tp_getset = Users_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "prover._userindex",
    "A ledger's users numbered in the order they came (see prover/_userindex.c).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__userindex(void)
{
    if (PyType_Ready(&UsersType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&UsersType);
    if (PyModule_AddObject(m, "Users", (PyObject *)&UsersType) < 0) {
        Py_DECREF(&UsersType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
