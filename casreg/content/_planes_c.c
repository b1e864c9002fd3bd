/* The PLANES codec's two loops in C (casreg/content/planes.py; docs/FORMAT.md §4.1).
 *
 * split(src, planes): src holds n elements of width bytes (2 or 4), little-endian, at any
 *     address; each element is rotated left by one bit and byte i of the result goes to
 *     planes[i][k] for element k. Every plane is a writable buffer of n bytes.
 * join(planes, dst): the inverse: dst (width * n writable bytes, any address) receives the
 *     elements whose rotated bytes the planes hold.
 * distinct(buf): the number of distinct byte values at each offset modulo 4 of buf (a
 *     4-tuple), for the float probe (float_probe.py), which asks it of a 2 KiB sample of
 *     every chunk a push cannot place by a header: 1-2 us where sets of bytes took 30 us.
 * same(a, b): whether two buffers hold the same bytes (memcmp without the GIL), for push's
 *     check before write, which compares what a payload decodes to with the chunk's bytes
 *     (bytes and bytearray compare with memcmp, but a memoryview compares item by item,
 *     80 times slower, and holds the GIL).
 *
 * An optional extension: planes.py uses numpy's whole-array operations where it was not
 * built (no C compiler at install), with the same results (tests/test_planes_join.py runs
 * both). Every length is checked here before a byte is touched, and neither loop reads or
 * writes outside the buffers it was given, whatever their contents: the bytes decoded from
 * a registry are hostile, and a wrong plane only yields wrong bytes, which the chunk's
 * BLAKE3 then refuses. The loops run without the GIL: a pull's workers join in parallel.
 * Bytes are read and written one at a time (shifts, no casts of pointers), so the result
 * does not depend on the host's byte order or alignment; gcc and clang vectorise the
 * loops at -O3. On x86-64 Linux each loop is also compiled for AVX2 and the processor picks
 * (target_clones): twice as fast as the SSE2 baseline here (docs/benchmarks-codec.md). */
#include "_loops.h"

LOOP static void split2(const uint8_t *restrict src, uint8_t *restrict p0, uint8_t *restrict p1, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        uint16_t v = (uint16_t)(src[2 * k] | (uint16_t)src[2 * k + 1] << 8);
        uint16_t r = (uint16_t)(v << 1 | v >> 15);
        p0[k] = (uint8_t)r;
        p1[k] = (uint8_t)(r >> 8);
    }
}

LOOP static void split4(const uint8_t *restrict src, uint8_t *restrict p0, uint8_t *restrict p1, uint8_t *restrict p2,
                   uint8_t *restrict p3, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        uint32_t v = (uint32_t)src[4 * k] | (uint32_t)src[4 * k + 1] << 8 | (uint32_t)src[4 * k + 2] << 16
                     | (uint32_t)src[4 * k + 3] << 24;
        uint32_t r = v << 1 | v >> 31;
        p0[k] = (uint8_t)r;
        p1[k] = (uint8_t)(r >> 8);
        p2[k] = (uint8_t)(r >> 16);
        p3[k] = (uint8_t)(r >> 24);
    }
}

LOOP static void join2(const uint8_t *restrict p0, const uint8_t *restrict p1, uint8_t *restrict dst, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        uint16_t r = (uint16_t)((uint16_t)p1[k] << 8 | p0[k]);
        uint16_t v = (uint16_t)(r >> 1 | r << 15);
        dst[2 * k] = (uint8_t)v;
        dst[2 * k + 1] = (uint8_t)(v >> 8);
    }
}

LOOP static void join4(const uint8_t *restrict p0, const uint8_t *restrict p1, const uint8_t *restrict p2,
                  const uint8_t *restrict p3, uint8_t *restrict dst, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        uint32_t r = (uint32_t)p3[k] << 24 | (uint32_t)p2[k] << 16 | (uint32_t)p1[k] << 8 | p0[k];
        uint32_t v = r >> 1 | r << 31;
        dst[4 * k] = (uint8_t)v;
        dst[4 * k + 1] = (uint8_t)(v >> 8);
        dst[4 * k + 2] = (uint8_t)(v >> 16);
        dst[4 * k + 3] = (uint8_t)(v >> 24);
    }
}

/* Take the buffers of a sequence of 2 or 4 planes of one length (flags: PyBUF_SIMPLE to
 * read, PyBUF_WRITABLE to write); *taken says how many to release, also on an error. */
static Py_ssize_t take_planes(PyObject *seq, Py_buffer *planes, int flags, Py_ssize_t *taken) {
    *taken = 0;
    Py_ssize_t width = PySequence_Fast_GET_SIZE(seq);
    if (width != 2 && width != 4) {
        PyErr_SetString(PyExc_ValueError, "planes: there must be 2 or 4 of them");
        return -1;
    }
    for (Py_ssize_t i = 0; i < width; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &planes[i], flags) < 0)
            return -1;
        *taken = i + 1;
        if (planes[i].len != planes[0].len) {
            PyErr_SetString(PyExc_ValueError, "planes: they differ in length");
            return -1;
        }
    }
    return width;
}

/* split(src, planes) when splitting, else join(planes, dst): the arguments taken and
 * checked, the loop run without the GIL, every buffer released on every path. */
static PyObject *run(PyObject *args, int splitting) {
    Py_buffer data, planes[4];
    PyObject *arg, *seq;
    Py_ssize_t taken = 0, width;
    PyObject *result = NULL;
    if (splitting ? !PyArg_ParseTuple(args, "y*O:split", &data, &arg)
                  : !PyArg_ParseTuple(args, "Ow*:join", &arg, &data))
        return NULL;
    if ((seq = PySequence_Fast(arg, "planes must be a sequence")) == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if ((width = take_planes(seq, planes, splitting ? PyBUF_WRITABLE : PyBUF_SIMPLE, &taken)) < 0)
        goto done;
    Py_ssize_t n = planes[0].len;
    if (data.len / width != n || data.len % width != 0) {
        PyErr_SetString(PyExc_ValueError, splitting ? "split: the source is not one element per plane byte"
                                                    : "join: the destination is not one element per plane byte");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (splitting && width == 2)
        split2(data.buf, planes[0].buf, planes[1].buf, n);
    else if (splitting)
        split4(data.buf, planes[0].buf, planes[1].buf, planes[2].buf, planes[3].buf, n);
    else if (width == 2)
        join2(planes[0].buf, planes[1].buf, data.buf, n);
    else
        join4(planes[0].buf, planes[1].buf, planes[2].buf, planes[3].buf, data.buf, n);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < taken; i++)
        PyBuffer_Release(&planes[i]);
    Py_DECREF(seq);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *loops_same(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a, b;
    int same;
    if (!PyArg_ParseTuple(args, "y*y*:same", &a, &b))
        return NULL;
    same = a.len == b.len;
    if (same && a.len > 0) {
        Py_BEGIN_ALLOW_THREADS
        same = memcmp(a.buf, b.buf, (size_t)a.len) == 0;
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyBool_FromLong(same);
}

static PyObject *loops_distinct(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a;
    uint8_t seen[4][256];
    Py_ssize_t count[4] = {0, 0, 0, 0};
    if (!PyArg_ParseTuple(args, "y*:distinct", &a))
        return NULL;
    memset(seen, 0, sizeof seen);
    const uint8_t *p = a.buf;
    for (Py_ssize_t k = 0; k < a.len; k++) {
        uint8_t *s = &seen[k & 3][p[k]];
        count[k & 3] += !*s;
        *s = 1;
    }
    PyBuffer_Release(&a);
    return Py_BuildValue("(nnnn)", count[0], count[1], count[2], count[3]);
}

static PyObject *loops_split(PyObject *Py_UNUSED(self), PyObject *args) { return run(args, 1); }

static PyObject *loops_join(PyObject *Py_UNUSED(self), PyObject *args) { return run(args, 0); }

static PyMethodDef loops_methods[] = {
    {"split", loops_split, METH_VARARGS, "split(src, planes): the rotated bytes of src's elements into planes."},
    {"join", loops_join, METH_VARARGS, "join(planes, dst): the elements whose rotated bytes planes hold into dst."},
    {"same", loops_same, METH_VARARGS, "same(a, b): whether the two buffers hold the same bytes."},
    {"distinct", loops_distinct, METH_VARARGS, "distinct(buf): distinct byte values at each offset modulo 4."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef loops_module = {
    PyModuleDef_HEAD_INIT, "_planes_c", "The PLANES codec's split and join loops (optional, see planes.py).", -1,
    loops_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__planes_c(void) { return PyModule_Create(&loops_module); }
