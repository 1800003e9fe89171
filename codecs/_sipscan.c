/* Compiled SIP scanner behind meter.codecs.sip's Message API (issue 11 item 1).
 *
 * One call per datagram / framed stream message: finds the start line, each header line's name,
 * value and folding (RFC 3261 §7.3.1), folds compact forms into the canonical lower-case long name
 * (§7.3.3), frames the body by Content-Length (§18.3), and checks the fields every message needs
 * (mandatory and single headers, Call-ID, CSeq, Max-Forwards, Expires; §8.1.1, §20).
 *
 * Design rule: the scanner ACCEPTS a message only when it is sure the pure-Python codec
 * (codecs/sip.py, the reference) would accept the same parts with the same values. On any fault,
 * oddity or doubt it returns None and the caller runs the pure-Python parse, which produces the
 * reference answer (error reasons included). So the scanner never produces an error of its own.
 *
 * Untrusted bytes: every read is bounded by the buffer's length; nothing is ever written into it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *LineType = NULL;      /* codecs.sip._Line */
static PyObject *CompactKeys[26];      /* "v" -> "via" ... (NULL when the letter has none) */
static PyObject *KnownKeys = NULL;     /* tuple of interned canonical names, matched case-insensitively */
static PyObject *KeyVia, *KeyFrom, *KeyTo, *KeyCallId, *KeyCSeq, *KeyMaxForwards, *KeyContentLength,
    *KeyExpires;

/* RFC 3261 §25.1 token characters. */
static unsigned char TOKEN[256];

static void init_tables(void)
{
    const char *extra = "-.!%*_+`'~";
    memset(TOKEN, 0, sizeof TOKEN);
    for (int c = 'a'; c <= 'z'; c++) TOKEN[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) TOKEN[c] = 1;
    for (int c = '0'; c <= '9'; c++) TOKEN[c] = 1;
    for (const char *p = extra; *p; p++) TOKEN[(unsigned char)*p] = 1;
}

static inline int is_blank(unsigned char c) { return c == ' ' || c == '\t'; }
static inline unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c; }

/* The canonical key of a header name (already checked to be a token of length n, 1 <= n). */
static PyObject *key_of(const unsigned char *name, Py_ssize_t n)
{
    char buf[64];
    if (n == 1) {
        unsigned char c = lower(name[0]);
        if (c >= 'a' && c <= 'z' && CompactKeys[c - 'a'] != NULL) {
            Py_INCREF(CompactKeys[c - 'a']);
            return CompactKeys[c - 'a'];
        }
    }
    if (n <= (Py_ssize_t)sizeof buf) {
        for (Py_ssize_t i = 0; i < n; i++) buf[i] = (char)lower(name[i]);
        Py_ssize_t count = PyTuple_GET_SIZE(KnownKeys);
        for (Py_ssize_t k = 0; k < count; k++) {
            PyObject *key = PyTuple_GET_ITEM(KnownKeys, k);
            if (PyUnicode_GET_LENGTH(key) == n && memcmp(PyUnicode_1BYTE_DATA(key), buf, (size_t)n) == 0) {
                Py_INCREF(key);
                return key;
            }
        }
        return PyUnicode_FromStringAndSize(buf, n);
    }
    PyObject *s = PyUnicode_New(n, 127);
    if (s == NULL) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) out[i] = lower(name[i]);
    return s;
}

static inline PyObject *decode(const unsigned char *p, Py_ssize_t n)
{
    return PyUnicode_DecodeUTF8((const char *)p, n, "surrogateescape");
}

/* One header line as found: [start, end) in the buffer (continuation lines included), colon position,
 * key, and whether it was folded. */
typedef struct {
    Py_ssize_t start, end, colon;
    PyObject *key;
    int folded;
} LineSpan;

#define MAX_LINES_STACK 64

/* Trimmed value span of a non-folded line. */
static inline void value_span(const unsigned char *d, const LineSpan *l, Py_ssize_t *vs, Py_ssize_t *ve)
{
    Py_ssize_t a = l->colon + 1, b = l->end;
    while (a < b && is_blank(d[a])) a++;
    while (b > a && is_blank(d[b - 1])) b--;
    *vs = a;
    *ve = b;
}

/* [0-9]{1,10} fullmatch -> value, else -1. */
static long long digits_1_10(const unsigned char *p, Py_ssize_t n)
{
    if (n < 1 || n > 10) return -1;
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static int ascii_ieq(const unsigned char *p, const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower(p[i]) != (unsigned char)s[i]) return 0;
    return 1;
}

/* scan(data, max_message_bytes, max_headers, max_header_bytes) -> tuple | None
 *
 * The tuple: (is_request, method|status, uri|reason, version, start_line_bytes, lines, index,
 *             body_start, end, content_length|None, cseq_number, cseq_method)
 * lines: list of _Line; index: {key: [_Line, ...]} in line order.
 */
static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t max_message, max_headers, max_header_bytes;
    PyObject *data_obj;
    if (!PyArg_ParseTuple(args, "Snnn", &data_obj, &max_message, &max_headers, &max_header_bytes))
        return NULL;
    if (LineType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_sipscan.init() was not called");
        return NULL;
    }
    if (PyObject_GetBuffer(data_obj, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    const Py_ssize_t len = view.len;
    PyObject *result = NULL;
    LineSpan stack_lines[MAX_LINES_STACK];
    LineSpan *lines = stack_lines;
    Py_ssize_t nlines = 0, cap = MAX_LINES_STACK;
    PyObject *list = NULL, *index = NULL, *start_bytes = NULL, *f1 = NULL, *f2 = NULL, *version = NULL,
             *cseq_method = NULL;

#define FALLBACK goto fallback
    if (len > max_message || len < 4) FALLBACK;
    if (d[0] == '\r' || d[0] == '\n') FALLBACK;  /* leading CRLFs (RFC 3261 §7.5): the reference strips them */

    /* The header section's end: the first CRLFCRLF. */
    Py_ssize_t end = -1;
    for (Py_ssize_t i = 0; i + 3 < len; i++) {
        if (d[i] == '\r' && d[i + 1] == '\n' && d[i + 2] == '\r' && d[i + 3] == '\n') {
            end = i;
            break;
        }
    }
    if (end < 0 || end > max_header_bytes) FALLBACK;

    /* Lines of [0, end): every CR must be followed by LF and every LF preceded by CR (no bare CR/LF). */
    Py_ssize_t line_start = 0, start_end = -1;
    Py_ssize_t i = 0;
    while (i <= end) {
        Py_ssize_t eol;
        if (i == end) {
            eol = end;
        } else if (d[i] == '\r') {
            if (i + 1 >= end || d[i + 1] != '\n') FALLBACK;  /* bare CR (a CRLF at end-... is end itself) */
            eol = i;
        } else if (d[i] == '\n') {
            FALLBACK;  /* bare LF */
        } else {
            i++;
            continue;
        }
        /* physical line [line_start, eol) */
        if (start_end < 0) {
            start_end = eol;
        } else {
            if (eol == line_start) FALLBACK;  /* empty line inside the head: cannot happen, but be sure */
            unsigned char c = d[line_start];
            if (is_blank(c)) {
                if (nlines == 0) FALLBACK;  /* continuation before the first header */
                lines[nlines - 1].end = eol;  /* RFC 3261 §7.3.1: part of the previous line */
                lines[nlines - 1].folded = 1;
            } else {
                Py_ssize_t colon = -1;
                for (Py_ssize_t j = line_start; j < eol; j++) {
                    if (d[j] == ':') {
                        colon = j;
                        break;
                    }
                }
                if (colon <= line_start) FALLBACK;
                Py_ssize_t name_end = colon;
                while (name_end > line_start && is_blank(d[name_end - 1])) name_end--;
                if (name_end == line_start) FALLBACK;
                for (Py_ssize_t j = line_start; j < name_end; j++)
                    if (!TOKEN[d[j]]) FALLBACK;
                if (nlines >= max_headers) FALLBACK;  /* the reference answers 400: let it */
                if (nlines == cap) {
                    Py_ssize_t ncap = cap * 2;
                    LineSpan *grown = PyMem_Malloc(sizeof(LineSpan) * (size_t)ncap);
                    if (grown == NULL) {
                        PyErr_NoMemory();
                        goto error;
                    }
                    memcpy(grown, lines, sizeof(LineSpan) * (size_t)nlines);
                    if (lines != stack_lines) PyMem_Free(lines);
                    lines = grown;
                    cap = ncap;
                }
                PyObject *key = key_of(d + line_start, name_end - line_start);
                if (key == NULL) goto error;
                lines[nlines].start = line_start;
                lines[nlines].end = eol;
                lines[nlines].colon = colon;
                lines[nlines].key = key;
                lines[nlines].folded = 0;
                nlines++;
            }
        }
        if (eol == end) break;
        i = eol + 2;
        line_start = i;
    }
    if (start_end <= 0) FALLBACK;

    /* Start line (RFC 3261 §7.1, §7.2); anything but the plain shapes goes to the reference. */
    int is_request;
    Py_ssize_t sl = start_end;
    if (sl >= 4 && ascii_ieq(d, "sip/", 4)) {
        /* SIP/2.0 SP 3DIGIT [SP reason] */
        if (sl < 11 || !ascii_ieq(d, "sip/2.0", 7) || d[7] != ' ') FALLBACK;
        if (d[8] < '1' || d[8] > '6' || d[9] < '0' || d[9] > '9' || d[10] < '0' || d[10] > '9') FALLBACK;
        if (sl > 11 && d[11] != ' ') FALLBACK;
        is_request = 0;
        f1 = PyLong_FromLong((d[8] - '0') * 100 + (d[9] - '0') * 10 + (d[10] - '0'));
        if (f1 == NULL) goto error;
        f2 = sl > 11 ? decode(d + 12, sl - 12) : PyUnicode_New(0, 0);
        if (f2 == NULL) goto error;
        version = PyUnicode_FromStringAndSize((const char *)d, 7);
        if (version == NULL) goto error;
    } else {
        /* Method SP Request-URI SP SIP/2.0: exactly two single spaces */
        Py_ssize_t sp1 = -1, sp2 = -1;
        for (Py_ssize_t j = 0; j < sl; j++) {
            if (d[j] == ' ') {
                if (sp1 < 0) sp1 = j;
                else if (sp2 < 0) sp2 = j;
                else FALLBACK;
            }
        }
        if (sp1 <= 0 || sp2 < 0 || sp2 == sp1 + 1) FALLBACK;
        for (Py_ssize_t j = 0; j < sp1; j++)
            if (!TOKEN[d[j]]) FALLBACK;
        if (sl - sp2 - 1 != 7 || !ascii_ieq(d + sp2 + 1, "sip/2.0", 7)) FALLBACK;
        is_request = 1;
        f1 = PyUnicode_FromStringAndSize((const char *)d, sp1);
        if (f1 == NULL) goto error;
        f2 = decode(d + sp1 + 1, sp2 - sp1 - 1);
        if (f2 == NULL) goto error;
        version = PyUnicode_FromStringAndSize((const char *)d + sp2 + 1, 7);
        if (version == NULL) goto error;
    }

    /* The fields every message needs (RFC 3261 §8.1.1, §7.3.1 multi01/mcl01, §20). */
    int n_via = 0, n_from = 0, n_to = 0, n_cid = 0, n_cseq = 0, n_mf = 0, n_cl = 0;
    LineSpan *cid = NULL, *cseq = NULL, *mf = NULL, *cl = NULL, *exp = NULL;
    for (Py_ssize_t k = 0; k < nlines; k++) {
        PyObject *key = lines[k].key;
        if (key == KeyVia) n_via++;
        else if (key == KeyFrom) n_from++;
        else if (key == KeyTo) n_to++;
        else if (key == KeyCallId) { n_cid++; cid = &lines[k]; }
        else if (key == KeyCSeq) { n_cseq++; cseq = &lines[k]; }
        else if (key == KeyMaxForwards) { n_mf++; mf = &lines[k]; }
        else if (key == KeyContentLength) { n_cl++; cl = &lines[k]; }
        else if (key == KeyExpires) { if (exp == NULL) exp = &lines[k]; }
        /* watched keys are always the interned objects: key_of() finds every name of <= 64 octets */
    }
    if (!n_via || n_from != 1 || n_to != 1 || n_cid != 1 || n_cseq != 1 || n_mf > 1 || n_cl > 1) FALLBACK;
    Py_ssize_t vs, ve;
    /* Call-ID: non-empty, no blanks */
    if (cid->folded) FALLBACK;
    value_span(d, cid, &vs, &ve);
    if (vs == ve) FALLBACK;
    for (Py_ssize_t j = vs; j < ve; j++)
        if (is_blank(d[j])) FALLBACK;
    /* CSeq: 1*DIGIT LWS token, number < 2**31 (§8.1.1.5), method = the request's */
    if (cseq->folded) FALLBACK;
    value_span(d, cseq, &vs, &ve);
    Py_ssize_t j = vs;
    long long number = 0;
    while (j < ve && d[j] >= '0' && d[j] <= '9') {
        number = number * 10 + (d[j] - '0');
        if (number > 2147483647LL) FALLBACK;
        j++;
    }
    if (j == vs || j >= ve || !is_blank(d[j])) FALLBACK;
    while (j < ve && is_blank(d[j])) j++;
    Py_ssize_t m0 = j;
    while (j < ve && TOKEN[d[j]]) j++;
    if (j == m0 || j != ve) FALLBACK;
    if (is_request) {
        Py_ssize_t mlen = PyUnicode_GET_LENGTH(f1);
        if (mlen != ve - m0 || memcmp(PyUnicode_1BYTE_DATA(f1), d + m0, (size_t)mlen) != 0) FALLBACK;
        cseq_method = f1;
        Py_INCREF(cseq_method);
    } else {
        cseq_method = PyUnicode_FromStringAndSize((const char *)d + m0, ve - m0);
        if (cseq_method == NULL) goto error;
    }
    /* Max-Forwards 0-255 (§20.22), Expires < 2**32 (§20.19): the first line's value */
    if (mf != NULL) {
        if (mf->folded) FALLBACK;
        value_span(d, mf, &vs, &ve);
        long long v = digits_1_10(d + vs, ve - vs);
        if (v < 0 || v > 255) FALLBACK;
    }
    if (exp != NULL) {
        if (exp->folded) FALLBACK;
        value_span(d, exp, &vs, &ve);
        long long v = digits_1_10(d + vs, ve - vs);
        if (v < 0 || v > 4294967295LL) FALLBACK;
    }
    /* Body by Content-Length (§18.3); without it, the rest of the datagram. */
    Py_ssize_t body_start = end + 4, msg_end = len;
    long long clen = -1;
    if (cl != NULL) {
        if (cl->folded) FALLBACK;
        value_span(d, cl, &vs, &ve);
        clen = digits_1_10(d + vs, ve - vs);
        if (clen < 0 || clen > len - body_start) FALLBACK;
        msg_end = body_start + (Py_ssize_t)clen;
    }

    /* Build the _Line objects, the index and the result. */
    list = PyList_New(nlines);
    index = PyDict_New();
    start_bytes = PyBytes_FromStringAndSize((const char *)d, start_end);
    if (list == NULL || index == NULL || start_bytes == NULL) goto error;
    for (Py_ssize_t k = 0; k < nlines; k++) {
        LineSpan *l = &lines[k];
        PyObject *argv[4];
        PyObject *raw = PyBytes_FromStringAndSize((const char *)d + l->start, l->end - l->start);
        if (raw == NULL) goto error;
        PyObject *vstart = PyLong_FromSsize_t(l->colon + 1 - l->start);
        if (vstart == NULL) {
            Py_DECREF(raw);
            goto error;
        }
        PyObject *value;
        if (l->folded) {
            value = Py_None;  /* unfolded lazily by _Line.value */
            Py_INCREF(value);
        } else {
            value_span(d, l, &vs, &ve);
            value = decode(d + vs, ve - vs);
            if (value == NULL) {
                Py_DECREF(raw);
                Py_DECREF(vstart);
                goto error;
            }
        }
        argv[0] = l->key;
        argv[1] = raw;
        argv[2] = vstart;
        argv[3] = value;
        PyObject *line = PyObject_Vectorcall(LineType, argv, 4, NULL);
        Py_DECREF(raw);
        Py_DECREF(vstart);
        Py_DECREF(value);
        if (line == NULL) goto error;
        PyList_SET_ITEM(list, k, line);  /* steals */
        PyObject *lst = PyDict_GetItemWithError(index, l->key);
        if (lst == NULL) {
            if (PyErr_Occurred()) goto error;
            lst = PyList_New(1);
            if (lst == NULL) goto error;
            Py_INCREF(line);
            PyList_SET_ITEM(lst, 0, line);
            int rc = PyDict_SetItem(index, l->key, lst);
            Py_DECREF(lst);
            if (rc < 0) goto error;
        } else if (PyList_Append(lst, line) < 0) {
            goto error;
        }
    }
    PyObject *clen_obj;
    if (clen >= 0) {
        clen_obj = PyLong_FromLongLong(clen);
        if (clen_obj == NULL) goto error;
    } else {
        clen_obj = Py_None;
        Py_INCREF(clen_obj);
    }
    result = Py_BuildValue("(OOOOOOOnnNLO)", is_request ? Py_True : Py_False, f1, f2, version, start_bytes,
                           list, index, body_start, msg_end, clen_obj, number, cseq_method);
    goto done;

fallback:
    result = Py_None;
    Py_INCREF(result);
    goto done;
error:
    result = NULL;
done:
    for (Py_ssize_t k = 0; k < nlines; k++) Py_DECREF(lines[k].key);
    if (lines != stack_lines) PyMem_Free(lines);
    Py_XDECREF(list);
    Py_XDECREF(index);
    Py_XDECREF(start_bytes);
    Py_XDECREF(f1);
    Py_XDECREF(f2);
    Py_XDECREF(version);
    Py_XDECREF(cseq_method);
    PyBuffer_Release(&view);
    return result;
#undef FALLBACK
}

static PyObject *intern_key(PyObject *tuple, const char *name)
{
    /* The interned object from KnownKeys (so the identity tests in scan() hold). */
    Py_ssize_t n = (Py_ssize_t)strlen(name);
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tuple); k++) {
        PyObject *key = PyTuple_GET_ITEM(tuple, k);
        if (PyUnicode_GET_LENGTH(key) == n && memcmp(PyUnicode_1BYTE_DATA(key), name, (size_t)n) == 0) {
            Py_INCREF(key);
            return key;
        }
    }
    PyErr_Format(PyExc_ValueError, "known keys lack %s", name);
    return NULL;
}

/* init(line_type, compact_forms: dict[str, str], known_keys: tuple[str, ...]) */
static PyObject *init(PyObject *self, PyObject *args)
{
    PyObject *line_type, *compact, *known;
    if (!PyArg_ParseTuple(args, "OO!O!", &line_type, &PyDict_Type, &compact, &PyTuple_Type, &known)) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(known);
    PyObject *interned = PyTuple_New(count);
    if (interned == NULL) return NULL;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *key = PyTuple_GET_ITEM(known, k);
        if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key)) {
            Py_DECREF(interned);
            PyErr_SetString(PyExc_TypeError, "known keys must be ASCII str");
            return NULL;
        }
        Py_INCREF(key);
        PyUnicode_InternInPlace(&key);
        PyTuple_SET_ITEM(interned, k, key);
    }
    Py_XSETREF(KnownKeys, interned);
    for (int c = 0; c < 26; c++) Py_CLEAR(CompactKeys[c]);
    PyObject *letter, *longname;
    Py_ssize_t pos = 0;
    while (PyDict_Next(compact, &pos, &letter, &longname)) {
        if (!PyUnicode_Check(letter) || PyUnicode_GET_LENGTH(letter) != 1 || !PyUnicode_Check(longname)) continue;
        Py_UCS4 c = PyUnicode_READ_CHAR(letter, 0);
        if (c < 'a' || c > 'z') continue;
        Py_INCREF(longname);
        PyUnicode_InternInPlace(&longname);
        CompactKeys[c - 'a'] = longname;
    }
    Py_INCREF(line_type);
    Py_XSETREF(LineType, line_type);
    PyObject **slots[] = {&KeyVia, &KeyFrom, &KeyTo, &KeyCallId, &KeyCSeq, &KeyMaxForwards, &KeyContentLength,
                          &KeyExpires};
    const char *names[] = {"via", "from", "to", "call-id", "cseq", "max-forwards", "content-length", "expires"};
    for (int k = 0; k < 8; k++) {
        PyObject *key = intern_key(KnownKeys, names[k]);
        if (key == NULL) return NULL;
        Py_XSETREF(*slots[k], key);
    }
    /* compact forms must be the same objects as the known keys (identity tests) */
    for (int c = 0; c < 26; c++) {
        if (CompactKeys[c] == NULL) continue;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(KnownKeys); k++) {
            PyObject *key = PyTuple_GET_ITEM(KnownKeys, k);
            if (PyUnicode_Compare(key, CompactKeys[c]) == 0) {
                Py_INCREF(key);
                Py_SETREF(CompactKeys[c], key);
                break;
            }
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "scan(data, max_message_bytes, max_headers, max_header_bytes) -> tuple | None"},
    {"init", init, METH_VARARGS, "init(line_type, compact_forms, known_keys)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sipscan",
                                    "Compiled SIP scanner (see codecs/sip.py: parse).", -1, methods};

PyMODINIT_FUNC PyInit__sipscan(void)
{
    init_tables();
    return PyModule_Create(&module);
}
