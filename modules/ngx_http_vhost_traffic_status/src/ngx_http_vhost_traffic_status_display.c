
/*
 * Virtual-host traffic status: the status page (JSON, Prometheus, HTML).
 *
 * The whole body is built into a chain of memory buffers first, so that
 * Content-Length is known and the page works as a subrequest
 * (e.g. ngx.location.capture) and for HEAD.
 */


#include "ngx_http_vhost_traffic_status_module.h"
#include "ngx_http_vhost_traffic_status_dashboard.h"


#define NGX_HTTP_VTS_OUT_BUF_SIZE  16384
#define NGX_HTTP_VTS_OUT_FMT_MAX   512


typedef struct {
    ngx_pool_t                 *pool;
    ngx_chain_t                *first;
    ngx_chain_t               **last;
    ngx_buf_t                  *b;
    off_t                       size;
    ngx_uint_t                  error;
} ngx_http_vts_out_t;


typedef struct {
    uint64_t                    accepted;
    uint64_t                    active;
    uint64_t                    handled;
    uint64_t                    reading;
    uint64_t                    requests;
    uint64_t                    waiting;
    uint64_t                    writing;
} ngx_http_vts_conns_t;


typedef struct {
    ngx_http_request_t         *r;
    ngx_http_vts_out_t         *out;
    ngx_http_vts_snapshot_t    *snap;
    ngx_http_vts_main_conf_t   *vmcf;
    ngx_http_vts_conns_t        conns;
    uint64_t                    now_msec;
    ngx_uint_t                  average_method;
    ngx_msec_t                  average_period;
    ngx_str_t                   hostname;
} ngx_http_vts_page_t;


static u_char *ngx_http_vts_out_reserve(ngx_http_vts_out_t *out, size_t n);
static void ngx_http_vts_out_raw(ngx_http_vts_out_t *out, u_char *data,
    size_t len);
static void ngx_http_vts_out_fmt(ngx_http_vts_out_t *out,
    const char *fmt, ...);
static void ngx_http_vts_out_prom_esc(ngx_http_vts_out_t *out, ngx_str_t *s);
static void ngx_http_vts_out_json_str(ngx_http_vts_out_t *out, ngx_str_t *s);

static ngx_uint_t ngx_http_vts_count_kind(ngx_http_vts_snapshot_t *snap,
    ngx_uint_t kind);
static void ngx_http_vts_prom_upstreams(ngx_http_vts_page_t *pg);
static void ngx_http_vts_prom_caches(ngx_http_vts_page_t *pg);
static void ngx_http_vts_prom_cache_statuses(ngx_http_vts_out_t *out,
    ngx_http_vts_snapshot_t *snap, const char *name, const char *help,
    ngx_uint_t kind);
static void ngx_http_vts_prometheus(ngx_http_vts_page_t *pg);
static void ngx_http_vts_json(ngx_http_vts_page_t *pg);
static void ngx_http_vts_html(ngx_http_vts_page_t *pg);


#define ngx_http_vts_out_str(out, s)                                          \
    ngx_http_vts_out_raw(out, (u_char *) s, sizeof(s) - 1)


static ngx_str_t  ngx_http_vts_nginx_version = ngx_string(NGINX_VERSION);
static ngx_str_t  ngx_http_vts_module_version =
    ngx_string(NGX_HTTP_VTS_MODULE_VERSION);


/* output buffers */

static u_char *
ngx_http_vts_out_reserve(ngx_http_vts_out_t *out, size_t n)
{
    size_t        size;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    if (out->error) {
        return NULL;
    }

    if (out->b != NULL && (size_t) (out->b->end - out->b->last) >= n) {
        return out->b->last;
    }

    size = ngx_max(n, NGX_HTTP_VTS_OUT_BUF_SIZE);

    b = ngx_create_temp_buf(out->pool, size);
    if (b == NULL) {
        out->error = 1;
        return NULL;
    }

    cl = ngx_alloc_chain_link(out->pool);
    if (cl == NULL) {
        out->error = 1;
        return NULL;
    }

    cl->buf = b;
    cl->next = NULL;

    *out->last = cl;
    out->last = &cl->next;
    out->b = b;

    return b->last;
}


static void
ngx_http_vts_out_raw(ngx_http_vts_out_t *out, u_char *data, size_t len)
{
    u_char  *p;

    p = ngx_http_vts_out_reserve(out, len);
    if (p == NULL) {
        return;
    }

    out->b->last = ngx_cpymem(p, data, len);
    out->size += len;
}


/* only for numbers and short constant strings: at most 512 bytes */

static void
ngx_http_vts_out_fmt(ngx_http_vts_out_t *out, const char *fmt, ...)
{
    u_char   *p, *last;
    va_list   args;

    p = ngx_http_vts_out_reserve(out, NGX_HTTP_VTS_OUT_FMT_MAX);
    if (p == NULL) {
        return;
    }

    va_start(args, fmt);
    last = ngx_vslprintf(p, p + NGX_HTTP_VTS_OUT_FMT_MAX, fmt, args);
    va_end(args);

    out->size += last - p;
    out->b->last = last;
}


/*
 * Prometheus label value: escapes backslash, double quote and newline.
 * Bytes that are not valid UTF-8 (possible in a Host header) become
 * U+FFFD, because a scraper rejects the whole page otherwise.
 */

static void
ngx_http_vts_out_prom_esc(ngx_http_vts_out_t *out, ngx_str_t *s)
{
    u_char      *p, *src, *end, *next;
    uint32_t     cp;

    p = ngx_http_vts_out_reserve(out, s->len * 3);
    if (p == NULL) {
        return;
    }

    src = s->data;
    end = s->data + s->len;

    while (src < end) {

        if (*src >= 0x80) {
            next = src;
            cp = ngx_utf8_decode(&next, end - src);

            if (cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff)) {
                p = ngx_cpymem(p, src, next - src);
                src = next;

            } else {
                p = ngx_cpymem(p, "\xef\xbf\xbd", 3);
                src++;
            }

            continue;
        }

        switch (*src) {

        case '\\':
            *p++ = '\\'; *p++ = '\\';
            break;

        case '"':
            *p++ = '\\'; *p++ = '"';
            break;

        case '\n':
            *p++ = '\\'; *p++ = 'n';
            break;

        default:
            *p++ = *src;
        }

        src++;
    }

    out->size += p - out->b->last;
    out->b->last = p;
}


/*
 * A quoted JSON string.  Control characters are escaped; bytes that are
 * not part of valid UTF-8 are emitted as \u00XX so the output is always
 * valid JSON.
 */

static void
ngx_http_vts_out_json_str(ngx_http_vts_out_t *out, ngx_str_t *s)
{
    u_char           *p, *src, *end, *next;
    uint32_t          cp;
    static u_char     hex[] = "0123456789abcdef";

    p = ngx_http_vts_out_reserve(out, s->len * 6 + 2);
    if (p == NULL) {
        return;
    }

    *p++ = '"';

    src = s->data;
    end = s->data + s->len;

    while (src < end) {

        if (*src >= 0x80) {
            next = src;
            cp = ngx_utf8_decode(&next, end - src);

            if (cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff)) {
                p = ngx_cpymem(p, src, next - src);
                src = next;
                continue;
            }

            goto escape;
        }

        switch (*src) {

        case '"':
            *p++ = '\\'; *p++ = '"';
            break;

        case '\\':
            *p++ = '\\'; *p++ = '\\';
            break;

        case '\n':
            *p++ = '\\'; *p++ = 'n';
            break;

        case '\r':
            *p++ = '\\'; *p++ = 'r';
            break;

        case '\t':
            *p++ = '\\'; *p++ = 't';
            break;

        default:
            if (*src < 0x20 || *src == 0x7f) {
                goto escape;
            }

            *p++ = *src;
        }

        src++;
        continue;

    escape:

        *p++ = '\\'; *p++ = 'u'; *p++ = '0'; *p++ = '0';
        *p++ = hex[*src >> 4];
        *p++ = hex[*src & 0xf];
        src++;
    }

    *p++ = '"';

    out->size += p - out->b->last;
    out->b->last = p;
}


/* helpers */

static void
ngx_http_vts_out_seconds(ngx_http_vts_out_t *out, uint64_t msec)
{
    ngx_http_vts_out_fmt(out, "%uL.%03uL", msec / 1000, msec % 1000);
}


/* the moving average of a window, by the displaying location's method */

static uint64_t
ngx_http_vts_page_average(ngx_http_vts_page_t *pg, ngx_http_vts_window_t *w)
{
    return ngx_http_vts_window_average(w, pg->average_method,
                                       pg->average_period, pg->now_msec);
}


static void
ngx_http_vts_get_connections(ngx_http_vts_conns_t *c)
{
    ngx_memzero(c, sizeof(ngx_http_vts_conns_t));

#if (NGX_STAT_STUB)
    c->accepted = *ngx_stat_accepted;
    c->active = *ngx_stat_active;
    c->handled = *ngx_stat_handled;
    c->reading = *ngx_stat_reading;
    c->requests = *ngx_stat_requests;
    c->waiting = *ngx_stat_waiting;
    c->writing = *ngx_stat_writing;
#endif
}


/* the upstream {} block named by an upstream entry's group */

static ngx_http_upstream_srv_conf_t *
ngx_http_vts_find_upstream(ngx_http_request_t *r, ngx_http_vts_entry_t *e)
{
    ngx_uint_t                       i;
    ngx_http_upstream_srv_conf_t   **uscfp, *uscf;
    ngx_http_upstream_main_conf_t   *umcf;

    if (e->kind != NGX_HTTP_VTS_KIND_UPSTREAM) {
        return NULL;
    }

    umcf = ngx_http_get_module_main_conf(r, ngx_http_upstream_module);
    if (umcf == NULL) {
        return NULL;
    }

    uscfp = umcf->upstreams.elts;

    for (i = 0; i < umcf->upstreams.nelts; i++) {
        uscf = uscfp[i];

        if ((uscf->flags & NGX_HTTP_UPSTREAM_CREATE)
            && uscf->servers != NULL
            && uscf->host.len == e->group.len
            && ngx_strncmp(uscf->host.data, e->group.data, e->group.len) == 0)
        {
            return uscf;
        }
    }

    return NULL;
}


ngx_http_upstream_server_t *
ngx_http_vts_find_server_conf(ngx_http_request_t *r, ngx_http_vts_entry_t *e)
{
    ngx_uint_t                      j, k;
    ngx_http_upstream_server_t     *us;
    ngx_http_upstream_srv_conf_t   *uscf;

    uscf = ngx_http_vts_find_upstream(r, e);
    if (uscf == NULL) {
        return NULL;
    }

    us = uscf->servers->elts;

    for (j = 0; j < uscf->servers->nelts; j++) {
        for (k = 0; k < us[j].naddrs; k++) {
            if (us[j].addrs[k].name.len == e->name.len
                && ngx_strncmp(us[j].addrs[k].name.data, e->name.data,
                               e->name.len) == 0)
            {
                return &us[j];
            }
        }
    }

    return NULL;
}


/*
 * Whether an upstream peer is down: marked so in the configuration, or at
 * run time in this worker's round-robin peers (as a health checker marks it
 * through ngx.upstream's set_peer_down).
 */

ngx_uint_t
ngx_http_vts_peer_is_down(ngx_http_request_t *r, ngx_http_vts_entry_t *e,
    ngx_http_upstream_server_t *us)
{
    ngx_uint_t                      down;
    ngx_http_upstream_rr_peer_t    *peer;
    ngx_http_upstream_rr_peers_t   *peers, *list;
    ngx_http_upstream_srv_conf_t   *uscf;

    if (us != NULL && us->down) {
        return 1;
    }

    uscf = ngx_http_vts_find_upstream(r, e);
    if (uscf == NULL || uscf->peer.data == NULL) {
        return 0;
    }

    /* every balancer of stock nginx keeps round-robin peers here */
    peers = uscf->peer.data;
    down = 0;

    ngx_http_upstream_rr_peers_rlock(peers);

    for (list = peers; list != NULL; list = list->next) {
        for (peer = list->peer; peer != NULL; peer = peer->next) {
            if (peer->name.len == e->name.len
                && ngx_strncmp(peer->name.data, e->name.data, e->name.len)
                   == 0)
            {
                down = peer->down;
                goto done;
            }
        }
    }

done:

    ngx_http_upstream_rr_peers_unlock(peers);

    return down;
}


/* the cache statuses, in the order of ngx_http_vts_counters_t's cache[] */
static const char  *ngx_http_vts_cache_statuses[NGX_HTTP_VTS_CACHE_STATUSES] = {
    "miss", "bypass", "expired", "stale", "updating", "revalidated", "hit",
    "scarce"
};


/* Prometheus text exposition */

#define ngx_http_vts_prom_family(out, name, help, type)                       \
    ngx_http_vts_out_str(out, "# HELP " name " " help "\n"                    \
                              "# TYPE " name " " type "\n")


static ngx_uint_t
ngx_http_vts_is_server(ngx_http_vts_entry_t *e)
{
    return e->kind == NGX_HTTP_VTS_KIND_SERVER
           || e->kind == NGX_HTTP_VTS_KIND_SUM;
}


static ngx_uint_t
ngx_http_vts_is_upstream(ngx_http_vts_entry_t *e)
{
    return e->kind == NGX_HTTP_VTS_KIND_UPSTREAM
           || e->kind == NGX_HTTP_VTS_KIND_NOGROUPS;
}


/*
 * A series name and the labels of its entry, up to the closing brace: host
 * for servers, upstream and backend for peers, filter and filter_name for
 * filter keys, cache_zone for caches.
 */

static void
ngx_http_vts_prom_label(ngx_http_vts_out_t *out, const char *name,
    ngx_http_vts_entry_t *e)
{
    ngx_http_vts_out_raw(out, (u_char *) name, ngx_strlen(name));

    if (ngx_http_vts_is_server(e)) {
        ngx_http_vts_out_str(out, "{host=\"");

    } else if (e->kind == NGX_HTTP_VTS_KIND_CACHE) {
        ngx_http_vts_out_str(out, "{cache_zone=\"");

    } else if (ngx_http_vts_is_upstream(e)) {
        ngx_http_vts_out_str(out, "{upstream=\"");
        ngx_http_vts_out_prom_esc(out, &e->group);
        ngx_http_vts_out_str(out, "\",backend=\"");

    } else {
        ngx_http_vts_out_str(out, "{filter=\"");
        ngx_http_vts_out_prom_esc(out, &e->group);
        ngx_http_vts_out_str(out, "\",filter_name=\"");
    }

    ngx_http_vts_out_prom_esc(out, &e->name);
    ngx_http_vts_out_str(out, "\"");
}


/*
 * The time families of server and upstream zones differ only in name, help
 * text, type, which sum they report and whether it is averaged over the
 * requests.
 */
typedef struct {
    const char                 *name;
    const char                 *help;
    const char                 *type;
    /* offset in ngx_http_vts_counters_t: of the sum, or with "average" of
     * the window whose moving average the family reports */
    size_t                      field;
    ngx_uint_t                  average;
} ngx_http_vts_time_family_t;


static ngx_http_vts_time_family_t  ngx_http_vts_upstream_times[] = {
    { "nginx_vts_upstream_request_seconds_total",
      "The request processing time including upstream in seconds",
      "counter", offsetof(ngx_http_vts_counters_t, request_msec), 0 },
    { "nginx_vts_upstream_request_seconds",
      "The average of request processing times including upstream in seconds",
      "gauge", offsetof(ngx_http_vts_counters_t, request_window), 1 },
    { "nginx_vts_upstream_response_seconds_total",
      "The only upstream response processing time in seconds",
      "counter", offsetof(ngx_http_vts_counters_t, response_msec), 0 },
    { "nginx_vts_upstream_response_seconds",
      "The average of only upstream response processing times in seconds",
      "gauge", offsetof(ngx_http_vts_counters_t, response_window), 1 },
};


static ngx_http_vts_time_family_t  ngx_http_vts_filter_times[] = {
    { "nginx_vts_filter_request_seconds_total",
      "The request processing time in seconds counter",
      "counter", offsetof(ngx_http_vts_counters_t, request_msec), 0 },
    { "nginx_vts_filter_request_seconds",
      "The average of request processing times in seconds",
      "gauge", offsetof(ngx_http_vts_counters_t, request_window), 1 },
};


static ngx_http_vts_time_family_t  ngx_http_vts_server_times[] = {
    { "nginx_vts_server_request_seconds_total",
      "The request processing time in seconds",
      "counter", offsetof(ngx_http_vts_counters_t, request_msec), 0 },
    { "nginx_vts_server_request_seconds",
      "The average of request processing times in seconds",
      "gauge", offsetof(ngx_http_vts_counters_t, request_window), 1 },
};


static void
ngx_http_vts_prom_times(ngx_http_vts_page_t *pg,
    ngx_http_vts_time_family_t *families, ngx_uint_t n, ngx_uint_t upstream)
{
    uint64_t                     msec;
    ngx_uint_t                   i, k;
    ngx_http_vts_out_t          *out;
    ngx_http_vts_entry_t        *e;
    ngx_http_vts_snapshot_t     *snap;
    ngx_http_vts_time_family_t  *tf;

    out = pg->out;
    snap = pg->snap;

    for (k = 0; k < n; k++) {
        tf = &families[k];

        ngx_http_vts_out_str(out, "# HELP ");
        ngx_http_vts_out_raw(out, (u_char *) tf->name, ngx_strlen(tf->name));
        ngx_http_vts_out_str(out, " ");
        ngx_http_vts_out_raw(out, (u_char *) tf->help, ngx_strlen(tf->help));
        ngx_http_vts_out_str(out, "\n# TYPE ");
        ngx_http_vts_out_raw(out, (u_char *) tf->name, ngx_strlen(tf->name));
        ngx_http_vts_out_str(out, " ");
        ngx_http_vts_out_raw(out, (u_char *) tf->type, ngx_strlen(tf->type));
        ngx_http_vts_out_str(out, "\n");

        for (i = 0; i < snap->nentries; i++) {
            e = &snap->entries[i];

            if (upstream == 2) {
                if (e->kind != NGX_HTTP_VTS_KIND_FILTER) {
                    continue;
                }

            } else if (upstream) {
                if (!ngx_http_vts_is_upstream(e)) {
                    continue;
                }

            } else if (!ngx_http_vts_is_server(e)) {
                continue;
            }

            ngx_http_vts_prom_label(out, tf->name, e);

            if (tf->average) {
                msec = ngx_http_vts_page_average(pg,
                           (ngx_http_vts_window_t *) ((u_char *) &e->c
                                                      + tf->field));

            } else {
                msec = *(uint64_t *) ((u_char *) &e->c + tf->field);
            }

            ngx_http_vts_out_str(out, "} ");
            ngx_http_vts_out_seconds(out, msec);

            ngx_http_vts_out_str(out, "\n");
        }
    }
}


/*
 * A histogram family over the entries of one sort (0 server, 1 upstream,
 * 2 filter) that have buckets; nothing when none has.
 */

static void
ngx_http_vts_prom_histogram(ngx_http_vts_out_t *out,
    ngx_http_vts_snapshot_t *snap, const char *name, const char *help,
    ngx_uint_t which, ngx_uint_t response)
{
    u_char                 series[128];
    uint64_t               sum, *counts;
    ngx_uint_t             i, j, k, n;
    ngx_http_vts_entry_t  *e;

    n = 0;

    for (i = 0; i < snap->nentries; i++) {
        e = &snap->entries[i];

        if (e->c.nbuckets == 0
            || (which == 0 && !ngx_http_vts_is_server(e))
            || (which == 1 && !ngx_http_vts_is_upstream(e))
            || (which == 2 && e->kind != NGX_HTTP_VTS_KIND_FILTER))
        {
            continue;
        }

        if (n++ == 0) {
            ngx_http_vts_out_fmt(out, "# HELP %s %s\n# TYPE %s histogram\n",
                                 name, help, name);
        }

        counts = response ? e->c.response_buckets : e->c.request_buckets;

        for (k = 0; k <= e->c.nbuckets + 2; k++) {

            *ngx_snprintf(series, sizeof(series) - 1, "%s%s", name,
                          k < e->c.nbuckets + 1 ? "_bucket"
                          : (k == e->c.nbuckets + 1 ? "_sum" : "_count"))
                = '\0';

            ngx_http_vts_prom_label(out, (char *) series, e);

            if (k < e->c.nbuckets) {
                sum = 0;

                for (j = 0; j <= k; j++) {
                    sum += counts[j];
                }

                ngx_http_vts_out_fmt(out, ",le=\"%uD.%03uD\"} %uL\n",
                                     e->c.bucket_msec[k] / 1000,
                                     e->c.bucket_msec[k] % 1000, sum);

            } else if (k == e->c.nbuckets) {
                ngx_http_vts_out_fmt(out, ",le=\"+Inf\"} %uL\n",
                                     e->c.requests);

            } else if (k == e->c.nbuckets + 1) {
                ngx_http_vts_out_str(out, "} ");
                ngx_http_vts_out_seconds(out, response ? e->c.response_msec
                                                       : e->c.request_msec);
                ngx_http_vts_out_str(out, "\n");

            } else {
                ngx_http_vts_out_fmt(out, "} %uL\n", e->c.requests);
            }
        }
    }
}


static void
ngx_http_vts_prometheus(ngx_http_vts_page_t *pg)
{
    ngx_str_t                 s;
    ngx_uint_t                i, k, nup;
    ngx_http_vts_out_t       *out;
    ngx_http_vts_entry_t     *e;
    ngx_http_vts_snapshot_t  *snap;

    out = pg->out;
    snap = pg->snap;

    /* main */

    ngx_http_vts_prom_family(out, "nginx_vts_info", "Nginx info", "gauge");
    ngx_http_vts_out_str(out, "nginx_vts_info{hostname=\"");
    ngx_http_vts_out_prom_esc(out, &pg->hostname);
    ngx_http_vts_out_str(out, "\",module_version=\"");
    ngx_http_vts_out_prom_esc(out, &ngx_http_vts_module_version);
    ngx_http_vts_out_str(out, "\",version=\"");
    ngx_http_vts_out_prom_esc(out, &ngx_http_vts_nginx_version);
    ngx_http_vts_out_str(out, "\"} 1\n");

    ngx_http_vts_prom_family(out, "nginx_vts_start_time_seconds",
                             "Nginx start time", "gauge");
    ngx_http_vts_out_str(out, "nginx_vts_start_time_seconds ");
    ngx_http_vts_out_seconds(out, pg->vmcf->start_msec);
    ngx_http_vts_out_str(out, "\n");

    ngx_http_vts_prom_family(out, "nginx_vts_main_connections",
                             "Nginx connections", "gauge");
    ngx_http_vts_out_fmt(out,
                 "nginx_vts_main_connections{status=\"accepted\"} %uL\n"
                 "nginx_vts_main_connections{status=\"active\"} %uL\n"
                 "nginx_vts_main_connections{status=\"handled\"} %uL\n"
                 "nginx_vts_main_connections{status=\"reading\"} %uL\n"
                 "nginx_vts_main_connections{status=\"requests\"} %uL\n"
                 "nginx_vts_main_connections{status=\"waiting\"} %uL\n"
                 "nginx_vts_main_connections{status=\"writing\"} %uL\n",
                 pg->conns.accepted, pg->conns.active, pg->conns.handled,
                 pg->conns.reading, pg->conns.requests, pg->conns.waiting,
                 pg->conns.writing);

    ngx_http_vts_out_str(out,
                 "# HELP nginx_vts_main_shm_usage_bytes Shared memory [");
    s = pg->vmcf->shm_zone->shm.name;
    ngx_http_vts_out_prom_esc(out, &s);
    ngx_http_vts_out_str(out, "] info\n"
                 "# TYPE nginx_vts_main_shm_usage_bytes gauge\n");
    ngx_http_vts_out_fmt(out,
                 "nginx_vts_main_shm_usage_bytes{shared=\"max_size\"} %uz\n"
                 "nginx_vts_main_shm_usage_bytes{shared=\"used_size\"} %uz\n"
                 "nginx_vts_main_shm_usage_bytes{shared=\"free_size\"} %uz\n"
                 "nginx_vts_main_shm_usage_bytes{shared=\"used_node\"} %ui\n",
                 snap->max_size, snap->used_size, snap->free_size,
                 snap->used_node);

    /* server zones, the sum zone "*" sorts after them */

    ngx_http_vts_prom_family(out, "nginx_vts_server_bytes_total",
                             "The request/response bytes", "counter");

    for (i = 0; i < snap->nentries; i++) {
        e = &snap->entries[i];
        if (!ngx_http_vts_is_server(e)) {
            continue;
        }

        ngx_http_vts_prom_label(out, "nginx_vts_server_bytes_total", e);
        ngx_http_vts_out_fmt(out, ",direction=\"in\"} %uL\n", e->c.in_bytes);
        ngx_http_vts_prom_label(out, "nginx_vts_server_bytes_total", e);
        ngx_http_vts_out_fmt(out, ",direction=\"out\"} %uL\n",
                             e->c.out_bytes);
    }

    ngx_http_vts_prom_family(out, "nginx_vts_server_requests_total",
                             "The requests counter", "counter");

    for (i = 0; i < snap->nentries; i++) {
        e = &snap->entries[i];
        if (!ngx_http_vts_is_server(e)) {
            continue;
        }

        for (k = 0; k < 5; k++) {
            ngx_http_vts_prom_label(out,
                                    "nginx_vts_server_requests_total", e);
            ngx_http_vts_out_fmt(out, ",code=\"%uixx\"} %uL\n",
                                 k + 1, e->c.responses[k]);
        }

        ngx_http_vts_prom_label(out,
                                    "nginx_vts_server_requests_total", e);
        ngx_http_vts_out_fmt(out, ",code=\"total\"} %uL\n", e->c.requests);
    }

    ngx_http_vts_prom_times(pg, ngx_http_vts_server_times,
                            sizeof(ngx_http_vts_server_times)
                            / sizeof(ngx_http_vts_server_times[0]), 0);

    ngx_http_vts_prom_cache_statuses(out, snap, "nginx_vts_server_cache_total",
                                     "The requests cache counter",
                                     NGX_HTTP_VTS_KIND_SERVER);

    ngx_http_vts_prom_histogram(out, snap,
                                "nginx_vts_server_request_duration_seconds",
                                "The histogram of request processing time",
                                0, 0);

    /* filter zones, when there are any */

    if (ngx_http_vts_count_kind(snap, NGX_HTTP_VTS_KIND_FILTER)) {

        ngx_http_vts_prom_family(out, "nginx_vts_filter_bytes_total",
                                 "The request/response bytes", "counter");

        for (i = 0; i < snap->nentries; i++) {
            e = &snap->entries[i];
            if (e->kind != NGX_HTTP_VTS_KIND_FILTER) {
                continue;
            }

            ngx_http_vts_prom_label(out,
                                           "nginx_vts_filter_bytes_total", e);
            ngx_http_vts_out_fmt(out, ",direction=\"in\"} %uL\n",
                                 e->c.in_bytes);
            ngx_http_vts_prom_label(out,
                                           "nginx_vts_filter_bytes_total", e);
            ngx_http_vts_out_fmt(out, ",direction=\"out\"} %uL\n",
                                 e->c.out_bytes);
        }

        ngx_http_vts_prom_family(out, "nginx_vts_filter_requests_total",
                                 "The requests counter", "counter");

        for (i = 0; i < snap->nentries; i++) {
            e = &snap->entries[i];
            if (e->kind != NGX_HTTP_VTS_KIND_FILTER) {
                continue;
            }

            for (k = 0; k < 5; k++) {
                ngx_http_vts_prom_label(out,
                                        "nginx_vts_filter_requests_total", e);
                ngx_http_vts_out_fmt(out, ",code=\"%uixx\"} %uL\n",
                                     k + 1, e->c.responses[k]);
            }
        }

        ngx_http_vts_prom_times(pg, ngx_http_vts_filter_times,
                                sizeof(ngx_http_vts_filter_times)
                                / sizeof(ngx_http_vts_filter_times[0]), 2);

        ngx_http_vts_prom_cache_statuses(out, snap,
                                         "nginx_vts_filter_cache_total",
                                         "The requests cache counter",
                                         NGX_HTTP_VTS_KIND_FILTER);

        ngx_http_vts_prom_histogram(out, snap,
                                "nginx_vts_filter_request_duration_seconds",
                                "The histogram of request processing time",
                                2, 0);
    }

    /* upstream zones */

    nup = 0;

    for (i = 0; i < snap->nentries; i++) {
        if (ngx_http_vts_is_upstream(&snap->entries[i])) {
            nup++;
        }
    }

    if (nup) {
        ngx_http_vts_prom_upstreams(pg);
    }

    if (ngx_http_vts_count_kind(snap, NGX_HTTP_VTS_KIND_CACHE)) {
        ngx_http_vts_prom_caches(pg);
    }
}


/* the upstream families, when there are upstream peers */

static void
ngx_http_vts_prom_upstreams(ngx_http_vts_page_t *pg)
{
    ngx_uint_t                i, k;
    ngx_http_vts_out_t       *out;
    ngx_http_vts_entry_t     *e;
    ngx_http_vts_snapshot_t  *snap;

    out = pg->out;
    snap = pg->snap;

    ngx_http_vts_prom_family(out, "nginx_vts_upstream_bytes_total",
                             "The request/response bytes", "counter");

    for (i = 0; i < snap->nentries; i++) {
        e = &snap->entries[i];
        if (!ngx_http_vts_is_upstream(e)) {
            continue;
        }

        ngx_http_vts_prom_label(out,
                                         "nginx_vts_upstream_bytes_total", e);
        ngx_http_vts_out_fmt(out, ",direction=\"in\"} %uL\n", e->c.in_bytes);
        ngx_http_vts_prom_label(out,
                                         "nginx_vts_upstream_bytes_total", e);
        ngx_http_vts_out_fmt(out, ",direction=\"out\"} %uL\n",
                             e->c.out_bytes);
    }

    ngx_http_vts_prom_family(out, "nginx_vts_upstream_requests_total",
                             "The upstream requests counter", "counter");

    for (i = 0; i < snap->nentries; i++) {
        e = &snap->entries[i];
        if (!ngx_http_vts_is_upstream(e)) {
            continue;
        }

        for (k = 0; k < 5; k++) {
            ngx_http_vts_prom_label(out,
                                    "nginx_vts_upstream_requests_total", e);
            ngx_http_vts_out_fmt(out, ",code=\"%uixx\"} %uL\n",
                                 k + 1, e->c.responses[k]);
        }

        ngx_http_vts_prom_label(out,
                                    "nginx_vts_upstream_requests_total", e);
        ngx_http_vts_out_fmt(out, ",code=\"total\"} %uL\n", e->c.requests);
    }

    ngx_http_vts_prom_times(pg, ngx_http_vts_upstream_times,
                            sizeof(ngx_http_vts_upstream_times)
                            / sizeof(ngx_http_vts_upstream_times[0]), 1);

    ngx_http_vts_prom_histogram(out, snap,
                        "nginx_vts_upstream_request_duration_seconds",
                        "The histogram of request processing time including "
                        "upstream", 1, 0);
    ngx_http_vts_prom_histogram(out, snap,
                        "nginx_vts_upstream_response_duration_seconds",
                        "The histogram of only upstream response processing "
                        "time", 1, 1);
}


/*
 * A family of "<name>{<labels>,status="miss"} n" ... over the server zones
 * (kind NGX_HTTP_VTS_KIND_SERVER, the sum zone included), the filter zones
 * or the cache zones.
 */

static void
ngx_http_vts_prom_cache_statuses(ngx_http_vts_out_t *out,
    ngx_http_vts_snapshot_t *snap, const char *name, const char *help,
    ngx_uint_t kind)
{
    ngx_uint_t             i, k;
    ngx_http_vts_entry_t  *e;

    ngx_http_vts_out_fmt(out, "# HELP %s %s\n# TYPE %s counter\n", name, help,
                         name);

    for (i = 0; i < snap->nentries; i++) {
        e = &snap->entries[i];

        if (kind == NGX_HTTP_VTS_KIND_SERVER ? !ngx_http_vts_is_server(e)
                                             : e->kind != kind)
        {
            continue;
        }

        for (k = 0; k < NGX_HTTP_VTS_CACHE_STATUSES; k++) {
            ngx_http_vts_prom_label(out, name, e);

            ngx_http_vts_out_fmt(out, ",status=\"%s\"} %uL\n",
                                 ngx_http_vts_cache_statuses[k],
                                 e->c.cache[k]);
        }
    }
}


/* the cache zone families, when a proxy_cache zone has been used */

static void
ngx_http_vts_prom_caches(ngx_http_vts_page_t *pg)
{
    ngx_uint_t                i;
    ngx_http_vts_out_t       *out;
    ngx_http_vts_entry_t     *e;
    ngx_http_vts_snapshot_t  *snap;

    out = pg->out;
    snap = pg->snap;

    ngx_http_vts_prom_family(out, "nginx_vts_cache_usage_bytes",
                             "THe cache zones info", "gauge");

    for (i = 0; i < snap->nentries; i++) {
        e = &snap->entries[i];
        if (e->kind != NGX_HTTP_VTS_KIND_CACHE) {
            continue;
        }

        ngx_http_vts_prom_label(out, "nginx_vts_cache_usage_bytes", e);
        ngx_http_vts_out_fmt(out, ",cache_size=\"max\"} %uL\n",
                             e->c.cache_max_size);
        ngx_http_vts_prom_label(out, "nginx_vts_cache_usage_bytes", e);
        ngx_http_vts_out_fmt(out, ",cache_size=\"used\"} %uL\n",
                             e->c.cache_used_size);
    }

    ngx_http_vts_prom_family(out, "nginx_vts_cache_bytes_total",
                             "The cache zones request/response bytes",
                             "counter");

    for (i = 0; i < snap->nentries; i++) {
        e = &snap->entries[i];
        if (e->kind != NGX_HTTP_VTS_KIND_CACHE) {
            continue;
        }

        ngx_http_vts_prom_label(out, "nginx_vts_cache_bytes_total", e);
        ngx_http_vts_out_fmt(out, ",direction=\"in\"} %uL\n", e->c.in_bytes);
        ngx_http_vts_prom_label(out, "nginx_vts_cache_bytes_total", e);
        ngx_http_vts_out_fmt(out, ",direction=\"out\"} %uL\n",
                             e->c.out_bytes);
    }

    ngx_http_vts_prom_cache_statuses(out, snap,
                                     "nginx_vts_cache_requests_total",
                                     "The cache requests counter",
                                     NGX_HTTP_VTS_KIND_CACHE);
}


/* JSON */

/* the cache status counters, as JSON members after a comma */

static void
ngx_http_vts_json_cache_counts(ngx_http_vts_out_t *out, uint64_t *cache)
{
    ngx_uint_t  k;

    for (k = 0; k < NGX_HTTP_VTS_CACHE_STATUSES; k++) {
        ngx_http_vts_out_fmt(out, k ? ",\"%s\":%uL" : "\"%s\":%uL",
                             ngx_http_vts_cache_statuses[k], cache[k]);
    }
}


/* "responses":{...}; server and filter zones also count cache statuses */

static void
ngx_http_vts_json_responses(ngx_http_vts_out_t *out, ngx_http_vts_entry_t *e,
    ngx_uint_t with_cache)
{
    ngx_http_vts_out_fmt(out,
                         "\"responses\":{\"1xx\":%uL,\"2xx\":%uL,\"3xx\":%uL,"
                         "\"4xx\":%uL,\"5xx\":%uL",
                         e->c.responses[0], e->c.responses[1],
                         e->c.responses[2], e->c.responses[3],
                         e->c.responses[4]);

    if (with_cache) {
        ngx_http_vts_out_str(out, ",");
        ngx_http_vts_json_cache_counts(out, e->c.cache);
    }

    ngx_http_vts_out_str(out, "}");
}


static ngx_uint_t
ngx_http_vts_str_eq(ngx_str_t *a, ngx_str_t *b)
{
    return a->len == b->len && ngx_strncmp(a->data, b->data, a->len) == 0;
}


/*
 * The main fields (the "::main" zone of the control API), without the
 * enclosing braces.
 */

static void
ngx_http_vts_json_main(ngx_http_vts_page_t *pg)
{
    ngx_http_vts_out_t       *out;
    ngx_http_vts_snapshot_t  *snap;

    out = pg->out;
    snap = pg->snap;

    ngx_http_vts_out_str(out, "\"hostName\":");
    ngx_http_vts_out_json_str(out, &pg->hostname);
    ngx_http_vts_out_str(out, ",\"moduleVersion\":");
    ngx_http_vts_out_json_str(out, &ngx_http_vts_module_version);
    ngx_http_vts_out_str(out, ",\"nginxVersion\":");
    ngx_http_vts_out_json_str(out, &ngx_http_vts_nginx_version);
    ngx_http_vts_out_fmt(out, ",\"loadMsec\":%uL,\"nowMsec\":%uL",
                         pg->vmcf->start_msec, pg->now_msec);

    ngx_http_vts_out_fmt(out,
                         ",\"connections\":{\"active\":%uL,\"reading\":%uL,"
                         "\"writing\":%uL,\"waiting\":%uL,\"accepted\":%uL,"
                         "\"handled\":%uL,\"requests\":%uL}",
                         pg->conns.active, pg->conns.reading,
                         pg->conns.writing, pg->conns.waiting,
                         pg->conns.accepted, pg->conns.handled,
                         pg->conns.requests);

    ngx_http_vts_out_str(out, ",\"sharedZones\":{\"name\":");
    ngx_http_vts_out_json_str(out, &pg->vmcf->shm_zone->shm.name);
    ngx_http_vts_out_fmt(out, ",\"maxSize\":%uz,\"usedSize\":%uz,"
                         "\"freeSize\":%uz,\"usedNode\":%ui}",
                         snap->max_size, snap->used_size, snap->free_size,
                         snap->used_node);
}


/* "name":{"msecs":[...],"counters":[...]} with cumulative counters */

static void
ngx_http_vts_json_buckets(ngx_http_vts_out_t *out, const char *name,
    ngx_http_vts_entry_t *e, uint64_t *counts)
{
    uint64_t    sum;
    ngx_uint_t  i;

    ngx_http_vts_out_fmt(out, ",\"%s\":{\"msecs\":[", name);

    for (i = 0; i < e->c.nbuckets; i++) {
        ngx_http_vts_out_fmt(out, i ? ",%uD" : "%uD", e->c.bucket_msec[i]);
    }

    ngx_http_vts_out_str(out, "],\"counters\":[");

    sum = 0;

    for (i = 0; i < e->c.nbuckets; i++) {
        sum += counts[i];
        ngx_http_vts_out_fmt(out, i ? ",%uL" : "%uL", sum);
    }

    ngx_http_vts_out_str(out, "]}");
}


/*
 * ,"<what>MsecCounter":sum,"<what>Msec":average,
 * "<what>Msecs":{"times":[...],"msecs":[...]}: the window, oldest first
 */

static void
ngx_http_vts_json_times(ngx_http_vts_page_t *pg, const char *what,
    uint64_t sum, ngx_http_vts_window_t *w)
{
    ngx_uint_t           i, n;
    ngx_http_vts_out_t  *out;

    out = pg->out;
    n = ngx_min(w->count, NGX_HTTP_VTS_WINDOW_LEN);

    ngx_http_vts_out_fmt(out, ",\"%sMsecCounter\":%uL,\"%sMsec\":%uL,"
                         "\"%sMsecs\":{\"times\":[", what, sum, what,
                         ngx_http_vts_page_average(pg, w), what);

    for (i = 0; i < n; i++) {
        ngx_http_vts_out_fmt(out, i ? ",%uL" : "%uL",
                             ngx_http_vts_window_time(w,
                                 ngx_http_vts_window_slot(w, i)));
    }

    ngx_http_vts_out_str(out, "],\"msecs\":[");

    for (i = 0; i < n; i++) {
        ngx_http_vts_out_fmt(out, i ? ",%M" : "%M",
                             ngx_http_vts_window_msec(w,
                                 ngx_http_vts_window_slot(w, i)));
    }

    ngx_http_vts_out_str(out, "]}");
}


/*
 * The object of a server or filter zone.  The counters are 64 bits wide
 * and are not expected to wrap, so every overCounts member is 0.
 */

static void
ngx_http_vts_json_zone(ngx_http_vts_page_t *pg, ngx_http_vts_entry_t *e)
{
    ngx_http_vts_out_t  *out;

    out = pg->out;

    ngx_http_vts_out_fmt(out, "{\"requestCounter\":%uL,\"inBytes\":%uL,"
                         "\"outBytes\":%uL,",
                         e->c.requests, e->c.in_bytes, e->c.out_bytes);
    ngx_http_vts_json_responses(out, e, 1);
    ngx_http_vts_json_times(pg, "request", e->c.request_msec,
                            &e->c.request_window);
    ngx_http_vts_json_buckets(out, "requestBuckets", e,
                              e->c.request_buckets);
    ngx_http_vts_out_fmt(out, ",\"overCounts\":{\"maxIntegerSize\":%uL,"
                         "\"requestCounter\":0,\"inBytes\":0,"
                         "\"outBytes\":0,\"1xx\":0,\"2xx\":0,\"3xx\":0,"
                         "\"4xx\":0,\"5xx\":0,\"miss\":0,\"bypass\":0,"
                         "\"expired\":0,\"stale\":0,\"updating\":0,"
                         "\"revalidated\":0,\"hit\":0,\"scarce\":0,"
                         "\"requestMsecCounter\":0}}",
                         (uint64_t) -1);
}


static void
ngx_http_vts_json_peer(ngx_http_vts_page_t *pg, ngx_http_vts_entry_t *e)
{
    ngx_http_vts_out_t          *out;
    ngx_http_upstream_server_t  *us;

    out = pg->out;

    ngx_http_vts_out_str(out, "{\"server\":");
    ngx_http_vts_out_json_str(out, &e->name);
    ngx_http_vts_out_fmt(out, ",\"requestCounter\":%uL,\"inBytes\":%uL,"
                         "\"outBytes\":%uL,",
                         e->c.requests, e->c.in_bytes, e->c.out_bytes);
    ngx_http_vts_json_responses(out, e, 0);
    ngx_http_vts_json_times(pg, "request", e->c.request_msec,
                            &e->c.request_window);
    ngx_http_vts_json_buckets(out, "requestBuckets", e,
                              e->c.request_buckets);
    ngx_http_vts_json_times(pg, "response", e->c.response_msec,
                            &e->c.response_window);
    ngx_http_vts_json_buckets(out, "responseBuckets", e,
                              e->c.response_buckets);

    us = ngx_http_vts_find_server_conf(pg->r, e);

    if (us != NULL) {
        ngx_http_vts_out_fmt(out, ",\"weight\":%ui,\"maxFails\":%ui,"
                             "\"failTimeout\":%T,\"backup\":%s,"
                             "\"down\":%s}",
                             us->weight, us->max_fails, us->fail_timeout,
                             us->backup ? "true" : "false",
                             ngx_http_vts_peer_is_down(pg->r, e, us)
                             ? "true" : "false");

    } else {
        ngx_http_vts_out_str(out, ",\"weight\":0,\"maxFails\":0,"
                             "\"failTimeout\":0,\"backup\":false,"
                             "\"down\":false}");
    }
}


/* "serverZones":{...}; only "name" when given */

static void
ngx_http_vts_json_server_zones(ngx_http_vts_page_t *pg, ngx_str_t *name)
{
    ngx_uint_t              i, n;
    ngx_http_vts_out_t     *out;
    ngx_http_vts_entry_t   *e;

    out = pg->out;
    n = 0;

    for (i = 0; i < pg->snap->nentries; i++) {
        e = &pg->snap->entries[i];

        if (!ngx_http_vts_is_server(e)
            || (name != NULL && !ngx_http_vts_str_eq(&e->name, name)))
        {
            continue;
        }

        if (n++) {
            ngx_http_vts_out_str(out, ",");
        }

        ngx_http_vts_out_json_str(out, &e->name);
        ngx_http_vts_out_str(out, ":");
        ngx_http_vts_json_zone(pg, e);
    }
}


static ngx_uint_t
ngx_http_vts_count_kind(ngx_http_vts_snapshot_t *snap, ngx_uint_t kind)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < snap->nentries; i++) {
        if (snap->entries[i].kind == kind) {
            n++;
        }
    }

    return n;
}


/* the groups of filterZones, without braces; one key with "group" */

static void
ngx_http_vts_json_filter_zones(ngx_http_vts_page_t *pg, ngx_str_t *group,
    ngx_str_t *name)
{
    ngx_str_t              *last;
    ngx_uint_t              i, n;
    ngx_http_vts_out_t     *out;
    ngx_http_vts_entry_t   *e;

    out = pg->out;
    last = NULL;
    n = 0;

    for (i = 0; i < pg->snap->nentries; i++) {
        e = &pg->snap->entries[i];

        if (e->kind != NGX_HTTP_VTS_KIND_FILTER) {
            continue;
        }

        if (group != NULL) {
            if (!ngx_http_vts_str_eq(&e->group, group)
                || !ngx_http_vts_str_eq(&e->name, name))
            {
                continue;
            }

            ngx_http_vts_out_json_str(out, &e->name);
            ngx_http_vts_out_str(out, ":");
            ngx_http_vts_json_zone(pg, e);
            return;
        }

        if (last == NULL || !ngx_http_vts_str_eq(last, &e->group)) {
            if (last != NULL) {
                ngx_http_vts_out_str(out, "},");
            }

            last = &e->group;
            n = 0;
            ngx_http_vts_out_json_str(out, last);
            ngx_http_vts_out_str(out, ":{");
        }

        if (n++) {
            ngx_http_vts_out_str(out, ",");
        }

        ngx_http_vts_out_json_str(out, &e->name);
        ngx_http_vts_out_str(out, ":");
        ngx_http_vts_json_zone(pg, e);
    }

    if (last != NULL) {
        ngx_http_vts_out_str(out, "}");
    }
}


/*
 * The groups of upstreamZones, without braces: named groups, ::nogroups,
 * or both.
 */

static void
ngx_http_vts_json_upstream_zones(ngx_http_vts_page_t *pg, ngx_uint_t groups,
    ngx_uint_t nogroups)
{
    ngx_str_t              *group;
    ngx_uint_t              i;
    ngx_http_vts_out_t     *out;
    ngx_http_vts_entry_t   *e;

    out = pg->out;
    group = NULL;

    for (i = 0; i < pg->snap->nentries; i++) {
        e = &pg->snap->entries[i];

        if (!(groups && e->kind == NGX_HTTP_VTS_KIND_UPSTREAM)
            && !(nogroups && e->kind == NGX_HTTP_VTS_KIND_NOGROUPS))
        {
            continue;
        }

        if (group == NULL || !ngx_http_vts_str_eq(group, &e->group)) {
            if (group != NULL) {
                ngx_http_vts_out_str(out, "],");
            }

            group = &e->group;
            ngx_http_vts_out_json_str(out, group);
            ngx_http_vts_out_str(out, ":[");

        } else {
            ngx_http_vts_out_str(out, ",");
        }

        ngx_http_vts_json_peer(pg, e);
    }

    if (group != NULL) {
        ngx_http_vts_out_str(out, "]");
    }
}


/* the members of "cacheZones" (only "name" when given) */

static void
ngx_http_vts_json_cache_zones(ngx_http_vts_page_t *pg, ngx_str_t *name)
{
    ngx_uint_t             i, n;
    ngx_http_vts_out_t    *out;
    ngx_http_vts_entry_t  *e;

    out = pg->out;
    n = 0;

    for (i = 0; i < pg->snap->nentries; i++) {
        e = &pg->snap->entries[i];

        if (e->kind != NGX_HTTP_VTS_KIND_CACHE
            || (name != NULL && !ngx_http_vts_str_eq(&e->name, name)))
        {
            continue;
        }

        if (n++) {
            ngx_http_vts_out_str(out, ",");
        }

        ngx_http_vts_out_json_str(out, &e->name);
        ngx_http_vts_out_fmt(out, ":{\"maxSize\":%uL,\"usedSize\":%uL,"
                             "\"inBytes\":%uL,\"outBytes\":%uL,"
                             "\"responses\":{",
                             e->c.cache_max_size, e->c.cache_used_size,
                             e->c.in_bytes, e->c.out_bytes);
        ngx_http_vts_json_cache_counts(out, e->c.cache);
        ngx_http_vts_out_fmt(out, "},\"overCounts\":{\"maxIntegerSize\":%uL,"
                             "\"inBytes\":0,\"outBytes\":0,\"miss\":0,"
                             "\"bypass\":0,\"expired\":0,\"stale\":0,"
                             "\"updating\":0,\"revalidated\":0,\"hit\":0,"
                             "\"scarce\":0}}", (uint64_t) -1);
    }
}


static void
ngx_http_vts_json(ngx_http_vts_page_t *pg)
{
    ngx_http_vts_out_t  *out;

    out = pg->out;

    ngx_http_vts_out_str(out, "{");
    ngx_http_vts_json_main(pg);

    ngx_http_vts_out_str(out, ",\"serverZones\":{");
    ngx_http_vts_json_server_zones(pg, NULL);
    ngx_http_vts_out_str(out, "}");

    if (ngx_http_vts_count_kind(pg->snap, NGX_HTTP_VTS_KIND_FILTER)) {
        ngx_http_vts_out_str(out, ",\"filterZones\":{");
        ngx_http_vts_json_filter_zones(pg, NULL, NULL);
        ngx_http_vts_out_str(out, "}");
    }

    ngx_http_vts_out_str(out, ",\"upstreamZones\":{");
    ngx_http_vts_json_upstream_zones(pg, 1, 1);
    ngx_http_vts_out_str(out, "}");

    if (ngx_http_vts_count_kind(pg->snap, NGX_HTTP_VTS_KIND_CACHE)) {
        ngx_http_vts_out_str(out, ",\"cacheZones\":{");
        ngx_http_vts_json_cache_zones(pg, NULL);
        ngx_http_vts_out_str(out, "}");
    }

    ngx_http_vts_out_str(out, "}\n");
}


/*
 * cmd=status of the control API: the whole document (group=*), the main
 * fields (group=server&zone=::main), one section (zone=*) or one zone.
 * An unknown zone gives {}.
 */

static void
ngx_http_vts_json_control_status(ngx_http_vts_page_t *pg, ngx_str_t *group,
    ngx_str_t *zone)
{
    u_char                *at;
    ngx_str_t              g, n;
    ngx_uint_t             i, all;
    ngx_http_vts_out_t    *out;
    ngx_http_vts_entry_t  *e;

    out = pg->out;
    all = (zone->len == 1 && zone->data[0] == '*');

#define ngx_http_vts_is(s, lit)                                               \
    ((s)->len == sizeof(lit) - 1 && ngx_strncmp((s)->data, lit, (s)->len) == 0)

    if (ngx_http_vts_is(group, "*")) {
        ngx_http_vts_json(pg);
        return;
    }

    ngx_http_vts_out_str(out, "{");

    if (ngx_http_vts_is(group, "server")) {

        if (ngx_http_vts_is(zone, "::main")) {
            ngx_http_vts_json_main(pg);

        } else if (all) {
            ngx_http_vts_out_str(out, "\"serverZones\":{");
            ngx_http_vts_json_server_zones(pg, NULL);
            ngx_http_vts_out_str(out, "}");

        } else {
            ngx_http_vts_json_server_zones(pg, zone);
        }

    } else if (ngx_http_vts_is(group, "filter")) {

        if (all) {
            ngx_http_vts_out_str(out, "\"filterZones\":{");
            ngx_http_vts_json_filter_zones(pg, NULL, NULL);
            ngx_http_vts_out_str(out, "}");

        } else {
            at = ngx_strlchr(zone->data, zone->data + zone->len, '@');

            if (at != NULL) {
                g.data = zone->data;
                g.len = at - zone->data;
                n.data = at + 1;
                n.len = zone->data + zone->len - n.data;
                ngx_http_vts_json_filter_zones(pg, &g, &n);
            }
        }

    } else if (ngx_http_vts_is(group, "upstream@group")
               || ngx_http_vts_is(group, "upstream@alone"))
    {
        if (all && group->data[9] == 'g') {
            ngx_http_vts_out_str(out, "\"upstreamZones\":{");
            ngx_http_vts_json_upstream_zones(pg, 1, 0);
            ngx_http_vts_out_str(out, "}");

        } else if (all) {
            ngx_http_vts_json_upstream_zones(pg, 0, 1);

        } else {
            /* one peer: the peer object itself */

            if (group->data[9] == 'g') {
                at = ngx_strlchr(zone->data, zone->data + zone->len, '@');
                if (at == NULL) {
                    goto done;
                }

                g.data = zone->data;
                g.len = at - zone->data;
                n.data = at + 1;
                n.len = zone->data + zone->len - n.data;

            } else {
                ngx_str_set(&g, NGX_HTTP_VTS_NOGROUPS_NAME);
                n = *zone;

                if (n.len && n.data[0] == '@') {
                    n.data++;
                    n.len--;
                }
            }

            for (i = 0; i < pg->snap->nentries; i++) {
                e = &pg->snap->entries[i];

                if (ngx_http_vts_is_upstream(e)
                    && ngx_http_vts_str_eq(&e->group, &g)
                    && ngx_http_vts_str_eq(&e->name, &n))
                {
                    /* replace the opening brace by the peer's own */
                    out->b->last--;
                    out->size--;
                    ngx_http_vts_json_peer(pg, e);
                    ngx_http_vts_out_str(out, "\n");
                    return;
                }
            }
        }

    } else if (ngx_http_vts_is(group, "cache")) {

        if (all) {
            ngx_http_vts_out_str(out, "\"cacheZones\":{");
            ngx_http_vts_json_cache_zones(pg, NULL);
            ngx_http_vts_out_str(out, "}");

        } else {
            ngx_http_vts_json_cache_zones(pg, zone);
        }
    }

#undef ngx_http_vts_is

done:

    ngx_http_vts_out_str(out, "}\n");
}


static void
ngx_http_vts_json_control_result(ngx_http_vts_out_t *out, ngx_uint_t ok,
    ngx_str_t *cmd, ngx_str_t *group, ngx_str_t *zone, ngx_uint_t count)
{
    ngx_http_vts_out_fmt(out, "{\"processingReturn\":%s,"
                         "\"processingCommandString\":",
                         ok ? "true" : "false");
    ngx_http_vts_out_json_str(out, cmd);
    ngx_http_vts_out_str(out, ",\"processingGroupString\":");
    ngx_http_vts_out_json_str(out, group);
    ngx_http_vts_out_str(out, ",\"processingZoneString\":");
    ngx_http_vts_out_json_str(out, zone);
    ngx_http_vts_out_fmt(out, ",\"processingCounts\":%ui}\n", count);
}


/* HTML: the live dashboard; everything it shows comes from the JSON format */

static void
ngx_http_vts_html(ngx_http_vts_page_t *pg)
{
    ngx_http_vts_out_raw(pg->out, (u_char *) ngx_http_vts_dashboard,
                         sizeof(ngx_http_vts_dashboard) - 1);
}


/* "/format/<name>" anywhere in the URI, ending at '/' or the URI end */

static ngx_uint_t
ngx_http_vts_uri_format(ngx_http_request_t *r)
{
    u_char      *p, *last, *end;
    ngx_uint_t   i;

    static struct {
        ngx_str_t   name;
        ngx_uint_t  format;
    } formats[] = {
        { ngx_string("/format/json"), NGX_HTTP_VTS_FORMAT_JSON },
        { ngx_string("/format/prometheus"), NGX_HTTP_VTS_FORMAT_PROMETHEUS },
        { ngx_string("/format/html"), NGX_HTTP_VTS_FORMAT_HTML },
        { ngx_string("/format/jsonp"), NGX_HTTP_VTS_FORMAT_JSONP },
    };

    last = r->uri.data + r->uri.len;

    for (i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {

        p = r->uri.data;

        while (p < last) {
            p = ngx_strnstr(p, (char *) formats[i].name.data, last - p);

            if (p == NULL) {
                break;
            }

            end = p + formats[i].name.len;

            if (end == last || *end == '/') {
                return formats[i].format;
            }

            p++;
        }
    }

    return NGX_HTTP_VTS_FORMAT_UNSET;
}


/* ".../control" as the URI's last segment */

static ngx_uint_t
ngx_http_vts_uri_is_control(ngx_http_request_t *r)
{
    static ngx_str_t  control = ngx_string("/control");

    return r->uri.len >= control.len
           && ngx_strncmp(r->uri.data + r->uri.len - control.len,
                          control.data, control.len) == 0;
}


/* a query argument, percent-decoded; empty when absent */

static void
ngx_http_vts_arg(ngx_http_request_t *r, const char *name, ngx_str_t *out)
{
    u_char     *dst, *src;
    ngx_str_t   v;

    out->len = 0;
    out->data = (u_char *) "";

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &v) != NGX_OK) {
        return;
    }

    dst = ngx_pnalloc(r->pool, v.len + 1);
    if (dst == NULL) {
        return;
    }

    out->data = dst;
    src = v.data;
    ngx_unescape_uri(&dst, &src, v.len, 0);
    out->len = dst - out->data;
}


ngx_int_t
ngx_http_vts_display_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_uint_t                 format;
    ngx_time_t                *tp;
    ngx_chain_t               *cl;
    ngx_http_vts_out_t         out;
    ngx_http_vts_page_t        pg;
    ngx_http_vts_snapshot_t    snap;
    ngx_str_t                  cmd, group, zone;
    ngx_uint_t                 control, count, i;
    ngx_http_vts_loc_conf_t   *vlcf;
    ngx_http_vts_main_conf_t  *vmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    vmcf = ngx_http_get_module_main_conf(r,
                                         ngx_http_vhost_traffic_status_module);

    if (vmcf == NULL || vmcf->shm_zone == NULL
        || vmcf->shm_zone->data == NULL)
    {
        return NGX_HTTP_NOT_IMPLEMENTED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    vlcf = ngx_http_get_module_loc_conf(r, ngx_http_vhost_traffic_status_module);

    format = ngx_http_vts_uri_format(r);

    if (format == NGX_HTTP_VTS_FORMAT_UNSET) {
        format = vlcf->format;
    }

    ngx_memzero(&out, sizeof(ngx_http_vts_out_t));
    out.pool = r->pool;
    out.last = &out.first;

    control = ngx_http_vts_uri_is_control(r);

    if (control) {
        ngx_http_vts_arg(r, "cmd", &cmd);
        ngx_http_vts_arg(r, "group", &group);
        ngx_http_vts_arg(r, "zone", &zone);

        if (!(cmd.len == 6 && ngx_strncmp(cmd.data, "status", 6) == 0)) {
            rc = ngx_http_vts_control(r, &cmd, &group, &zone, &count);

            if (rc == NGX_ERROR) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_http_vts_json_control_result(&out, rc == NGX_OK, &cmd,
                                             &group, &zone, count);
            ngx_str_set(&r->headers_out.content_type, "application/json");
            goto send;
        }

        format = NGX_HTTP_VTS_FORMAT_JSON;
    }

    if (ngx_http_vts_snapshot(r, &snap) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* vhost_traffic_status_display_sum_key names the sum zone */

    for (i = 0; i < snap.nentries; i++) {
        if (snap.entries[i].kind == NGX_HTTP_VTS_KIND_SUM) {
            snap.entries[i].name = vlcf->sum_key;
        }
    }

    tp = ngx_timeofday();

    pg.r = r;
    pg.out = &out;
    pg.snap = &snap;
    pg.vmcf = vmcf;
    pg.now_msec = (uint64_t) tp->sec * 1000 + tp->msec;
    pg.average_method = vlcf->average_method;
    pg.average_period = vlcf->average_period;
    pg.hostname.len = ngx_cycle->hostname.len;
    pg.hostname.data = ngx_cycle->hostname.data;
    ngx_http_vts_get_connections(&pg.conns);

    switch (format) {

    case NGX_HTTP_VTS_FORMAT_PROMETHEUS:
        ngx_http_vts_prometheus(&pg);
        ngx_str_set(&r->headers_out.content_type, "text/plain");
        break;

    case NGX_HTTP_VTS_FORMAT_HTML:
        ngx_http_vts_html(&pg);
        ngx_str_set(&r->headers_out.content_type, "text/html");
        break;

    case NGX_HTTP_VTS_FORMAT_JSONP:
        ngx_http_vts_out_raw(&out, vlcf->jsonp.data, vlcf->jsonp.len);
        ngx_http_vts_out_str(&out, "(");
        ngx_http_vts_json(&pg);
        /* the document ends with a newline: close the call before it */
        out.b->last--;
        out.size--;
        ngx_http_vts_out_str(&out, ")\n");
        ngx_str_set(&r->headers_out.content_type, "application/javascript");
        break;

    default: /* NGX_HTTP_VTS_FORMAT_JSON */
        if (control) {
            ngx_http_vts_json_control_status(&pg, &group, &zone);

        } else {
            ngx_http_vts_json(&pg);
        }

        ngx_str_set(&r->headers_out.content_type, "application/json");
        break;
    }

send:

    if (out.error || out.first == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = out.size;

    for (cl = out.first; cl->next; cl = cl->next) { /* void */ }

    cl->buf->last_buf = (r == r->main) ? 1 : 0;
    cl->buf->last_in_chain = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_output_filter(r, out.first);
}
