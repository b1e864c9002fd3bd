/* The DELTA codec's loop in C (casreg/content/delta.py; docs/FORMAT.md §4.2).
 *
 * apply(out, base, op, width, head, inverse): turn out (writable, n bytes) in place from a
 *     chunk into its residual against base (n bytes), or back when inverse is true.
 *     op 0: every byte is XORed with base's.
 *     op 1: the whole width-byte (2 or 4) little-endian elements from byte head on are
 *     subtracted from base's (residual = chunk - base, mod 2**(8*width)) and put in
 *     sign-magnitude form (an element with its top bit set has every other bit flipped: the
 *     map is its own inverse); inverse undoes it (chunk = residual in two's complement +
 *     base). The bytes before head and after the last whole element are XORed.
 *
 * An optional extension, beside _planes_c.c: delta.py does the same with numpy where it was
 * not built (tests/test_delta_loops.py compares both). Every length and argument is checked
 * before a byte is touched and nothing outside the two buffers is read or written: residuals
 * and bases come from a registry, which is hostile, and wrong bytes here are refused by the
 * chunk's BLAKE3 later. The loop runs without the GIL. Elements are read and written a byte
 * at a time, so the result depends neither on the host's byte order nor on alignment. */
#include "_loops.h"

LOOP static void xor_bytes(uint8_t *restrict out, const uint8_t *restrict base, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++)
        out[k] ^= base[k];
}

LOOP static void sub2(uint8_t *restrict out, const uint8_t *restrict base, Py_ssize_t n, int inverse) {
    for (Py_ssize_t k = 0; k < n; k++) {
        uint16_t x = (uint16_t)(out[2 * k] | (uint16_t)out[2 * k + 1] << 8);
        uint16_t b = (uint16_t)(base[2 * k] | (uint16_t)base[2 * k + 1] << 8);
        if (inverse) {
            x ^= (uint16_t)((x & 0x8000u) ? 0x7fffu : 0u);
            x = (uint16_t)(x + b);
        } else {
            x = (uint16_t)(x - b);
            x ^= (uint16_t)((x & 0x8000u) ? 0x7fffu : 0u);
        }
        out[2 * k] = (uint8_t)x;
        out[2 * k + 1] = (uint8_t)(x >> 8);
    }
}

LOOP static void sub4(uint8_t *restrict out, const uint8_t *restrict base, Py_ssize_t n, int inverse) {
    for (Py_ssize_t k = 0; k < n; k++) {
        uint32_t x = (uint32_t)out[4 * k] | (uint32_t)out[4 * k + 1] << 8 | (uint32_t)out[4 * k + 2] << 16
                     | (uint32_t)out[4 * k + 3] << 24;
        uint32_t b = (uint32_t)base[4 * k] | (uint32_t)base[4 * k + 1] << 8 | (uint32_t)base[4 * k + 2] << 16
                     | (uint32_t)base[4 * k + 3] << 24;
        if (inverse) {
            x ^= (x & 0x80000000u) ? 0x7fffffffu : 0u;
            x += b;
        } else {
            x -= b;
            x ^= (x & 0x80000000u) ? 0x7fffffffu : 0u;
        }
        out[4 * k] = (uint8_t)x;
        out[4 * k + 1] = (uint8_t)(x >> 8);
        out[4 * k + 2] = (uint8_t)(x >> 16);
        out[4 * k + 3] = (uint8_t)(x >> 24);
    }
}

static PyObject *loops_apply(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer out, base;
    int op, width, head, inverse;
    if (!PyArg_ParseTuple(args, "w*y*iiip:apply", &out, &base, &op, &width, &head, &inverse))
        return NULL;
    PyObject *result = NULL;
    if (out.len != base.len) {
        PyErr_SetString(PyExc_ValueError, "apply: the base is not as long as the chunk");
        goto done;
    }
    if (op != 0 && op != 1) {
        PyErr_SetString(PyExc_ValueError, "apply: op must be 0 (xor) or 1 (subtract)");
        goto done;
    }
    if (op == 1 && ((width != 2 && width != 4) || head < 0 || head >= width)) {
        PyErr_SetString(PyExc_ValueError, "apply: op 1 needs width 2 or 4 and 0 <= head < width");
        goto done;
    }
    Py_ssize_t n = out.len;
    uint8_t *o = out.buf;
    const uint8_t *b = base.buf;
    Py_BEGIN_ALLOW_THREADS
    if (op == 0) {
        xor_bytes(o, b, n);
    } else {
        Py_ssize_t lo = head < n ? head : n;
        Py_ssize_t count = (n - lo) / width, hi = lo + count * width;
        xor_bytes(o, b, lo);
        if (width == 2)
            sub2(o + lo, b + lo, count, inverse);
        else
            sub4(o + lo, b + lo, count, inverse);
        xor_bytes(o + hi, b + hi, n - hi);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&base);
    return result;
}

static PyMethodDef loops_methods[] = {
    {"apply", loops_apply, METH_VARARGS,
     "apply(out, base, op, width, head, inverse): out from a chunk into its residual against base, in place "
     "(inverse: back)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef loops_module = {
    PyModuleDef_HEAD_INIT, "_delta_c", "The DELTA codec's loop (optional, see delta.py).", -1,
    loops_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__delta_c(void) { return PyModule_Create(&loops_module); }
