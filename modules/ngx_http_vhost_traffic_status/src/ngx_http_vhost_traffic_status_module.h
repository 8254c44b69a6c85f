
/*
 * Virtual-host traffic status: per server / upstream peer counters kept in
 * a shared-memory zone and exposed as JSON, Prometheus text or HTML.
 *
 * Directive names, JSON keys and Prometheus metric names follow the
 * nginx-module-vts conventions (see the project's traffic-status spec);
 * the implementation is this project's own.
 */


#ifndef _NGX_HTTP_VHOST_TRAFFIC_STATUS_MODULE_H_INCLUDED_
#define _NGX_HTTP_VHOST_TRAFFIC_STATUS_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#ifndef NGX_HTTP_VTS_MODULE_VERSION
#define NGX_HTTP_VTS_MODULE_VERSION      "v0.1.0"
#endif

#define NGX_HTTP_VTS_DEFAULT_SHM_NAME    "vhost_traffic_status"
#define NGX_HTTP_VTS_DEFAULT_SHM_SIZE    (1024 * 1024)

/* zone kinds; the numeric order is the output order */
#define NGX_HTTP_VTS_KIND_SERVER         1
#define NGX_HTTP_VTS_KIND_SUM            2
#define NGX_HTTP_VTS_KIND_UPSTREAM       3
#define NGX_HTTP_VTS_KIND_NOGROUPS       4
#define NGX_HTTP_VTS_KIND_FILTER         5
#define NGX_HTTP_VTS_KIND_CACHE          6     /* a proxy_cache zone */

/* cache statuses counted, in nginx's order (NGX_HTTP_CACHE_MISS is 1) */
#define NGX_HTTP_VTS_CACHE_STATUSES      8

#define NGX_HTTP_VTS_SUM_KEY             "*"
#define NGX_HTTP_VTS_NOGROUPS_NAME       "::nogroups"
#define NGX_HTTP_VTS_EMPTY_SERVER_NAME   "_"

#define NGX_HTTP_VTS_FORMAT_UNSET        0
#define NGX_HTTP_VTS_FORMAT_JSON         1
#define NGX_HTTP_VTS_FORMAT_PROMETHEUS   2
#define NGX_HTTP_VTS_FORMAT_HTML         3
#define NGX_HTTP_VTS_FORMAT_JSONP        4

#define NGX_HTTP_VTS_DEFAULT_JSONP  "ngx_http_vhost_traffic_status_jsonp_callback"

#define NGX_HTTP_VTS_MAX_KEY_LEN         4096


#define NGX_HTTP_VTS_MAX_BUCKETS         32


/* vhost_traffic_status_histogram_buckets: upper bounds, increasing */
typedef struct {
    ngx_uint_t                  n;
    uint32_t                    msec[NGX_HTTP_VTS_MAX_BUCKETS];
} ngx_http_vts_buckets_t;


/* the last request times of a zone entry, for the moving averages */
#define NGX_HTTP_VTS_WINDOW_LEN          64

#define NGX_HTTP_VTS_AVERAGE_AMM         0
#define NGX_HTTP_VTS_AVERAGE_WMA         1

/*
 * A sample takes 8 bytes, so that a zone entry with both windows stays
 * within a 2 KB slab chunk: the epoch second, and in "packed" the time
 * taken in ms (saturated at NGX_HTTP_VTS_WINDOW_MAX_MSEC) above the 10
 * bits that hold the millisecond within that second.
 */
#define NGX_HTTP_VTS_WINDOW_MAX_MSEC     0x3fffff

typedef struct {
    uint32_t                    sec[NGX_HTTP_VTS_WINDOW_LEN];
    uint32_t                    packed[NGX_HTTP_VTS_WINDOW_LEN];
    uint32_t                    next;      /* the slot the next sample takes */
    uint32_t                    count;     /* samples held, up to the length */
} ngx_http_vts_window_t;


/* counters of one zone entry; all updated under the slab pool mutex */
typedef struct {
    uint64_t                    requests;
    uint64_t                    in_bytes;
    uint64_t                    out_bytes;
    uint64_t                    responses[5];      /* 1xx .. 5xx */
    uint64_t                    request_msec;      /* sum */
    uint64_t                    response_msec;     /* sum, upstream only */
    uint64_t                    last_msec;         /* last update, for LRU */
    /* histogram: bounds of the location that first counted with buckets */
    uint32_t                    nbuckets;
    uint32_t                    bucket_msec[NGX_HTTP_VTS_MAX_BUCKETS];
    uint64_t                    request_buckets[NGX_HTTP_VTS_MAX_BUCKETS];
    uint64_t                    response_buckets[NGX_HTTP_VTS_MAX_BUCKETS];
    ngx_http_vts_window_t       request_window;
    ngx_http_vts_window_t       response_window;   /* upstream only */
    /* miss .. scarce of server, filter and cache zones */
    uint64_t                    cache[NGX_HTTP_VTS_CACHE_STATUSES];
    uint64_t                    cache_max_size;    /* cache zones, bytes */
    uint64_t                    cache_used_size;
} ngx_http_vts_counters_t;


/*
 * One entry of the shared rbtree.  The rbtree node must come first.
 * The key is: group (upstream name) followed by the peer address for
 * upstream kinds, or the host name for server kinds (glen == 0).
 */
typedef struct {
    ngx_rbtree_node_t           node;
    ngx_http_vts_counters_t     counters;
    ngx_uint_t                  kind;
    size_t                      len;               /* whole key */
    size_t                      glen;              /* group part */
    u_char                      data[1];
} ngx_http_vts_node_t;


typedef struct {
    ngx_rbtree_t                rbtree;
    ngx_rbtree_node_t           sentinel;
    ngx_uint_t                  nodes;
    ngx_uint_t                  generation;        /* bumped by every free */
} ngx_http_vts_shctx_t;


typedef struct {
    ngx_http_vts_shctx_t       *sh;
    ngx_slab_pool_t            *shpool;
    ngx_str_t                   dump_file;         /* restore from, if set */
} ngx_http_vts_ctx_t;


/* one vhost_traffic_status_filter_by_set_key */
typedef struct {
    ngx_http_complex_value_t    key;
    ngx_int_t                   key_index;         /* a lone $variable, or -1 */
    ngx_http_complex_value_t    name;              /* empty: a server zone */
    ngx_uint_t                  has_name;
} ngx_http_vts_filter_key_t;


/* one vhost_traffic_status_limit_traffic[_by_set_key] */
typedef struct {
    ngx_http_complex_value_t    key;               /* by_set_key only */
    ngx_http_complex_value_t    member;            /* "member:size" */
    ngx_uint_t                  has_key;
    ngx_uint_t                  code;
} ngx_http_vts_limit_t;


typedef struct {
    ngx_shm_zone_t             *shm_zone;
    ngx_array_t                *filter_keys;       /* http level */
    ngx_uint_t                  filter_max_node;
    ngx_array_t                *filter_max_match;  /* of ngx_str_t */
    ngx_str_t                   dump_file;
    ngx_msec_t                  dump_period;
    ngx_str_t                   shm_name;
    ssize_t                     shm_size;
    uint64_t                    start_msec;        /* epoch msec of load */
} ngx_http_vts_main_conf_t;


typedef struct {
    ngx_flag_t                  enable;
    ngx_flag_t                  filter_by_host;
    ngx_flag_t                  filter;
    ngx_flag_t                  filter_check_duplicate;
    ngx_uint_t                  format;
    ngx_array_t                *filter_keys;       /* server / location */
    ngx_array_t                *filters;           /* applied: http + own */
    ngx_flag_t                  limit;
    ngx_flag_t                  limit_check_duplicate;
    ngx_flag_t                  bypass_limit;
    ngx_flag_t                  bypass_stats;
    ngx_array_t                *limits;            /* of ngx_http_vts_limit_t */
    ngx_http_vts_buckets_t     *buckets;
    ngx_array_t                *sets;              /* set_by_filter */
    ngx_flag_t                  stats_by_upstream;
    ngx_str_t                   sum_key;
    ngx_str_t                   jsonp;
    ngx_uint_t                  average_method;    /* AMM or WMA */
    ngx_msec_t                  average_period;    /* 0: every sample held */
    ngx_uint_t                  ignore_status;     /* bit N-1: Nxx ignored */
} ngx_http_vts_loc_conf_t;


/* a copy of one node taken under the lock, used while formatting */
typedef struct {
    ngx_uint_t                  kind;
    ngx_str_t                   group;
    ngx_str_t                   name;              /* host or peer */
    ngx_http_vts_counters_t     c;
} ngx_http_vts_entry_t;


typedef struct {
    size_t                      max_size;
    size_t                      free_size;
    size_t                      used_size;
    ngx_uint_t                  used_node;
    ngx_uint_t                  nentries;
    ngx_http_vts_entry_t       *entries;           /* sorted */
} ngx_http_vts_snapshot_t;


ngx_int_t ngx_http_vts_display_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_vts_snapshot(ngx_http_request_t *r,
    ngx_http_vts_snapshot_t *snap);
ngx_int_t ngx_http_vts_add_variables(ngx_conf_t *cf);
ngx_int_t ngx_http_vts_limit_handler(ngx_http_request_t *r);
ngx_http_vts_node_t *ngx_http_vts_node_get_locked(ngx_http_vts_ctx_t *ctx,
    ngx_uint_t kind, u_char *key, size_t len, size_t glen);
char *ngx_http_vts_dump(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
void ngx_http_vts_dump_restore(ngx_http_vts_ctx_t *ctx, ngx_str_t *path,
    ngx_log_t *log);
ngx_int_t ngx_http_vts_dump_write(ngx_http_vts_ctx_t *ctx, ngx_str_t *path,
    ngx_log_t *log);
ngx_int_t ngx_http_vts_dump_init_process(ngx_cycle_t *cycle);
void ngx_http_vts_dump_exit_process(ngx_cycle_t *cycle);
char *ngx_http_vts_set_by_filter(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_upstream_server_t *ngx_http_vts_find_server_conf(
    ngx_http_request_t *r, ngx_http_vts_entry_t *e);
ngx_uint_t ngx_http_vts_peer_is_down(ngx_http_request_t *r,
    ngx_http_vts_entry_t *e, ngx_http_upstream_server_t *us);
char *ngx_http_vts_limit_traffic(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_array_t *ngx_http_vts_limits_unique(ngx_conf_t *cf, ngx_array_t *limits);
ngx_int_t ngx_http_vts_server_key(ngx_http_request_t *r, ngx_str_t *host);
ngx_http_vts_node_t *ngx_http_vts_node_find_locked(ngx_http_vts_ctx_t *ctx,
    ngx_uint_t kind, u_char *key, size_t len, size_t glen);
void ngx_http_vts_node_delete_locked(ngx_http_vts_ctx_t *ctx,
    ngx_http_vts_node_t *vn);
ngx_int_t ngx_http_vts_control(ngx_http_request_t *r, ngx_str_t *cmd,
    ngx_str_t *group, ngx_str_t *zone, ngx_uint_t *count);
uint64_t ngx_http_vts_now_msec(void);
void ngx_http_vts_window_add(ngx_http_vts_window_t *w, uint64_t now,
    ngx_msec_t msec);
ngx_uint_t ngx_http_vts_window_slot(ngx_http_vts_window_t *w, ngx_uint_t i);
uint64_t ngx_http_vts_window_time(ngx_http_vts_window_t *w, ngx_uint_t k);
ngx_msec_t ngx_http_vts_window_msec(ngx_http_vts_window_t *w, ngx_uint_t k);
uint64_t ngx_http_vts_window_average(ngx_http_vts_window_t *w,
    ngx_uint_t method, ngx_msec_t period, uint64_t now);


extern ngx_module_t  ngx_http_vhost_traffic_status_module;


#endif /* _NGX_HTTP_VHOST_TRAFFIC_STATUS_MODULE_H_INCLUDED_ */
