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

/* Character classes (RFC 3261 §25.1), as the pure-Python fast paths' regular expressions spell them:
 * TOKEN token; USER the fast path's user part; PCHAR uri-parameter characters (paramchar without
 * escapes); HOST hostname characters. */
static unsigned char TOKEN[256], USER[256], PCHAR[256], HOST[256];

static void set_chars(unsigned char *table, const char *extra)
{
    memset(table, 0, 256);
    for (int c = 'a'; c <= 'z'; c++) table[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) table[c] = 1;
    for (int c = '0'; c <= '9'; c++) table[c] = 1;
    for (const char *p = extra; *p; p++) table[(unsigned char)*p] = 1;
}

static void init_tables(void)
{
    set_chars(TOKEN, "-.!%*_+`'~");
    set_chars(USER, "-_.!~*'()&=+$,");
    set_chars(PCHAR, "-_.!~*'()[]/:&+$");
    set_chars(HOST, "-.");
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
 *             body_start, end, content_length|None, cseq_number, cseq_method, max_forwards|None,
 *             expires|None)
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
    long long mf_value = -1, exp_value = -1;
    if (mf != NULL) {
        if (mf->folded) FALLBACK;
        value_span(d, mf, &vs, &ve);
        mf_value = digits_1_10(d + vs, ve - vs);
        if (mf_value < 0 || mf_value > 255) FALLBACK;
    }
    if (exp != NULL) {
        if (exp->folded) FALLBACK;
        value_span(d, exp, &vs, &ve);
        exp_value = digits_1_10(d + vs, ve - vs);
        if (exp_value < 0 || exp_value > 4294967295LL) FALLBACK;
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
    PyObject *mf_obj = mf_value >= 0 ? PyLong_FromLongLong(mf_value) : (Py_INCREF(Py_None), Py_None);
    PyObject *exp_obj = exp_value >= 0 ? PyLong_FromLongLong(exp_value) : (Py_INCREF(Py_None), Py_None);
    if (mf_obj == NULL || exp_obj == NULL) {
        Py_DECREF(clen_obj);
        Py_XDECREF(mf_obj);
        Py_XDECREF(exp_obj);
        goto error;
    }
    result = Py_BuildValue("(OOOOOOOnnNLONN)", is_request ? Py_True : Py_False, f1, f2, version, start_bytes,
                           list, index, body_start, msg_end, clen_obj, number, cseq_method, mf_obj, exp_obj);
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

/* ---- value fast paths (codecs/sip_grammar.py _VIA_FAST and _NAME_ADDR_FAST, same language) ---- */

static inline int is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Set dict[lower(name)] = value (or None); name/value are [a, b) spans of s. */
static int put_param(PyObject *dict, const unsigned char *s, Py_ssize_t na, Py_ssize_t nb, Py_ssize_t va,
                     Py_ssize_t vb)
{
    char small[64];
    char *buf = small;
    Py_ssize_t n = nb - na;
    if (n > (Py_ssize_t)sizeof small) {
        buf = PyMem_Malloc((size_t)n);
        if (buf == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) buf[i] = (char)lower(s[na + i]);
    PyObject *name = PyUnicode_FromStringAndSize(buf, n);
    if (buf != small) PyMem_Free(buf);
    if (name == NULL) return -1;
    PyObject *value;
    if (va < 0) {
        value = Py_None;
        Py_INCREF(value);
    } else {
        value = PyUnicode_FromStringAndSize((const char *)s + va, vb - va);
        if (value == NULL) {
            Py_DECREF(name);
            return -1;
        }
    }
    int rc = PyDict_SetItem(dict, name, value);
    Py_DECREF(name);
    Py_DECREF(value);
    return rc;
}

/* _SIMPLE_PARAMS = (?:;token(?:=(?:token|"[^"\\;\r\n]*"))?)* from *pos up to n: 0 matched all, 1 no match, -1 error. */
static int header_params(const unsigned char *s, Py_ssize_t n, Py_ssize_t *pos, PyObject *dict)
{
    Py_ssize_t i = *pos;
    while (i < n) {
        if (s[i] != ';') return 1;
        Py_ssize_t na = ++i;
        while (i < n && TOKEN[s[i]]) i++;
        Py_ssize_t nb = i, va = -1, vb = -1;
        if (nb == na) return 1;
        if (i < n && s[i] == '=') {
            i++;
            va = i;
            if (i < n && s[i] == '"') {
                i++;
                while (i < n && s[i] != '"') {
                    unsigned char c = s[i];
                    if (c == '\\' || c == ';' || c == '\r' || c == '\n') return 1;
                    i++;
                }
                if (i >= n) return 1;
                i++;  /* closing quote */
            } else {
                while (i < n && TOKEN[s[i]]) i++;
                if (i == va) return 1;
            }
            vb = i;
        }
        if (put_param(dict, s, na, nb, va, vb) < 0) return -1;
    }
    *pos = i;
    return 0;
}

/* hostname of the fast paths: [A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])? -> end, or -1 */
static Py_ssize_t hostname(const unsigned char *s, Py_ssize_t n, Py_ssize_t i)
{
    if (i >= n || !is_alnum(s[i])) return -1;
    Py_ssize_t a = i;
    while (i < n && HOST[s[i]]) i++;
    if (i - a > 1 && s[i - 1] == '-') return -1;
    return i;
}

/* (?::([0-9]{1,5}))? at i: sets *port (or leaves None) and returns the new i, or -1 when the port
 * is not 1-5 digits or is above 65535 (the reference raises then: let it). */
static Py_ssize_t port_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, PyObject **port)
{
    *port = NULL;
    if (i < n && s[i] == ':') {
        Py_ssize_t a = ++i;
        long v = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - a < 6) v = v * 10 + (s[i++] - '0');
        if (i == a || i - a > 5 || v > 65535) return -1;
        *port = PyLong_FromLong(v);
        if (*port == NULL) return -2;
    }
    return i;
}

static inline void strip_ws(const unsigned char *s, Py_ssize_t *a, Py_ssize_t *b)
{
    while (*a < *b && is_blank(s[*a])) (*a)++;
    while (*b > *a && is_blank(s[*b - 1])) (*b)--;
}

/* via(text) -> (transport_upper, host, port|None, params) | None (not the fast shape: ask Python) */
static PyObject *via(PyObject *self, PyObject *text)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) Py_RETURN_NONE;
    const unsigned char *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t a = 0, n = PyUnicode_GET_LENGTH(text);
    strip_ws(s, &a, &n);
    if (n - a < 9 || memcmp(s + a, "SIP/2.0/", 8) != 0) Py_RETURN_NONE;
    Py_ssize_t i = a + 8, ta = i;
    while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z'))) i++;
    Py_ssize_t tb = i;
    if (tb == ta || i >= n || s[i] != ' ') Py_RETURN_NONE;
    Py_ssize_t ha = ++i;
    i = hostname(s, n, i);
    if (i < 0) Py_RETURN_NONE;
    Py_ssize_t hb = i;
    PyObject *port;
    i = port_at(s, n, i, &port);
    if (i == -2) return NULL;
    if (i < 0) Py_RETURN_NONE;
    PyObject *params = PyDict_New();
    if (params == NULL) {
        Py_XDECREF(port);
        return NULL;
    }
    int rc = header_params(s, n, &i, params);
    if (rc != 0) {
        Py_XDECREF(port);
        Py_DECREF(params);
        if (rc < 0) return NULL;
        Py_RETURN_NONE;
    }
    char tbuf[32];
    if (tb - ta > (Py_ssize_t)sizeof tbuf) {
        Py_XDECREF(port);
        Py_DECREF(params);
        Py_RETURN_NONE;
    }
    for (Py_ssize_t k = ta; k < tb; k++) tbuf[k - ta] = (s[k] >= 'a' && s[k] <= 'z') ? (char)(s[k] - 32) : (char)s[k];
    if (port == NULL) {
        port = Py_None;
        Py_INCREF(port);
    }
    return Py_BuildValue("(s#s#NN)", tbuf, tb - ta, (const char *)s + ha, hb - ha, port, params);
}

/* URI params of the fast path: (?:;pchar+(?:=pchar+)?)* -> end, or -1; fills dict; *upper when any A-Z. */
static Py_ssize_t uri_params(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, PyObject *dict, int *upper)
{
    while (i < n && s[i] == ';') {
        Py_ssize_t na = ++i;
        while (i < n && PCHAR[s[i]]) i++;
        Py_ssize_t nb = i, va = -1, vb = -1;
        if (nb == na) return -1;
        if (i < n && s[i] == '=') {
            va = ++i;
            while (i < n && PCHAR[s[i]]) i++;
            if (i == va) return -1;
            vb = i;
        }
        for (Py_ssize_t k = na; k < i; k++)
            if (s[k] >= 'A' && s[k] <= 'Z') *upper = 1;
        if (put_param(dict, s, na, nb, va, vb) < 0) return -2;
    }
    return i;
}

/* uri(text) -> (scheme, user|None, host, port|None, params, text|None) | None: the SIP URI fast path
 * (_SIP_URI_FAST) for "sip:" / "sips:" written in lower case; anything else: ask Python. */
static PyObject *uri(PyObject *self, PyObject *text)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) Py_RETURN_NONE;
    const unsigned char *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = 0;
    if (n < 5 || memcmp(s, "sip", 3) != 0) Py_RETURN_NONE;
    i = 3;
    if (s[i] == 's') i++;
    Py_ssize_t sb = i;
    if (i >= n || s[i] != ':') Py_RETURN_NONE;
    i++;
    Py_ssize_t usa = i, usb = -1;
    while (i < n && USER[s[i]]) i++;
    if (i > usa && i < n && s[i] == '@') {
        usb = i;
        i++;
    } else {
        i = usa;
    }
    Py_ssize_t ha = i;
    i = hostname(s, n, i);
    if (i < 0) Py_RETURN_NONE;
    Py_ssize_t hb = i;
    PyObject *port = NULL, *params = NULL;
    i = port_at(s, n, i, &port);
    if (i == -2) return NULL;
    if (i < 0) Py_RETURN_NONE;
    int upper = 0;
    params = PyDict_New();
    if (params == NULL) {
        Py_XDECREF(port);
        return NULL;
    }
    i = uri_params(s, n, i, params, &upper);
    if (i == -2 || i != n) {
        Py_XDECREF(port);
        Py_DECREF(params);
        if (i == -2) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *user;
    if (usb >= 0) {
        user = PyUnicode_FromStringAndSize((const char *)s + usa, usb - usa);
        if (user == NULL) {
            Py_XDECREF(port);
            Py_DECREF(params);
            return NULL;
        }
    } else {
        user = Py_None;
        Py_INCREF(user);
    }
    if (port == NULL) {
        port = Py_None;
        Py_INCREF(port);
    }
    PyObject *utext = upper ? Py_None : text;  /* str() rebuilds exactly this text */
    return Py_BuildValue("(s#Ns#NNO)", (const char *)s, sb, user, (const char *)s + ha, hb - ha, port, params, utext);
}

/* name_addr(text) -> (display|None, scheme, user|None, host, port|None, uri_params, uri_text|None,
 *                     params) | None (not the fast shape: ask Python) */
static PyObject *name_addr(PyObject *self, PyObject *text)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) Py_RETURN_NONE;
    const unsigned char *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t a = 0, n = PyUnicode_GET_LENGTH(text);
    strip_ws(s, &a, &n);
    Py_ssize_t i = a, da = -1, db = -1;
    if (i < n && s[i] == '"') {
        da = ++i;
        while (i < n && s[i] != '"') {
            if (s[i] == '\\' || s[i] == '\r' || s[i] == '\n') Py_RETURN_NONE;
            i++;
        }
        if (i >= n) Py_RETURN_NONE;
        db = i++;
        if (i < n && s[i] == ' ') i++;
    } else if (i < n && TOKEN[s[i]]) {
        da = i;
        while (i < n && TOKEN[s[i]]) i++;
        while (i + 1 < n && s[i] == ' ' && TOKEN[s[i + 1]]) {
            i++;
            while (i < n && TOKEN[s[i]]) i++;
        }
        db = i;
        if (i < n && s[i] == ' ') i++;
    }
    if (i >= n || s[i] != '<') Py_RETURN_NONE;
    Py_ssize_t ua = ++i;  /* the URI's text starts here */
    if (n - i < 4 || memcmp(s + i, "sip", 3) != 0) Py_RETURN_NONE;
    i += 3;
    if (s[i] == 's') i++;
    Py_ssize_t sb = i;
    if (i >= n || s[i] != ':') Py_RETURN_NONE;
    i++;
    Py_ssize_t usa = i, usb = -1;
    while (i < n && USER[s[i]]) i++;
    if (i > usa && i < n && s[i] == '@') {
        usb = i;
        i++;
    } else {
        i = usa;
    }
    Py_ssize_t ha = i;
    i = hostname(s, n, i);
    if (i < 0) Py_RETURN_NONE;
    Py_ssize_t hb = i;
    PyObject *port = NULL, *uparams = NULL, *params = NULL, *out = NULL;
    i = port_at(s, n, i, &port);
    if (i == -2) return NULL;
    if (i < 0) Py_RETURN_NONE;
    int upper = 0;
    uparams = PyDict_New();
    params = PyDict_New();
    if (uparams == NULL || params == NULL) goto error;
    i = uri_params(s, n, i, uparams, &upper);
    if (i == -2) goto error;
    if (i < 0 || i >= n || s[i] != '>') goto nomatch;
    Py_ssize_t ub = i++;
    int rc = header_params(s, n, &i, params);
    if (rc < 0) goto error;
    if (rc > 0) goto nomatch;
    PyObject *display, *user, *scheme, *utext;
    if (da >= 0) display = PyUnicode_FromStringAndSize((const char *)s + da, db - da);
    else { display = Py_None; Py_INCREF(display); }
    if (usb >= 0) user = PyUnicode_FromStringAndSize((const char *)s + usa, usb - usa);
    else { user = Py_None; Py_INCREF(user); }
    scheme = PyUnicode_FromStringAndSize((const char *)s + ua, sb - ua);
    /* str() rebuilds exactly this text unless a parameter had capitals (they are lower-cased) */
    if (!upper) utext = PyUnicode_FromStringAndSize((const char *)s + ua, ub - ua);
    else { utext = Py_None; Py_INCREF(utext); }
    if (port == NULL) { port = Py_None; Py_INCREF(port); }
    if (display == NULL || user == NULL || scheme == NULL || utext == NULL) {
        Py_XDECREF(display); Py_XDECREF(user); Py_XDECREF(scheme); Py_XDECREF(utext);
        goto error;
    }
    out = Py_BuildValue("(NNNs#NONO)", display, scheme, user, (const char *)s + ha, hb - ha, port, uparams, utext,
                        params);
    Py_DECREF(uparams);
    Py_DECREF(params);
    return out;
nomatch:
    Py_XDECREF(port);
    Py_XDECREF(uparams);
    Py_XDECREF(params);
    Py_RETURN_NONE;
error:
    Py_XDECREF(port);
    Py_XDECREF(uparams);
    Py_XDECREF(params);
    return NULL;
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
    {"uri", uri, METH_O, "uri(text) -> (scheme, user, host, port, params, text) | None"},
    {"via", via, METH_O, "via(text) -> (transport, host, port, params) | None"},
    {"name_addr", name_addr, METH_O,
     "name_addr(text) -> (display, scheme, user, host, port, uri_params, uri_text, params) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sipscan",
                                    "Compiled SIP scanner (see codecs/sip.py: parse).", -1, methods};

PyMODINIT_FUNC PyInit__sipscan(void)
{
    init_tables();
    return PyModule_Create(&module);
}
