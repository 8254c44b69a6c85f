
/*
 * Virtual-host traffic status: configuration, shared zone and accounting
 * in the log phase.
 */


#include "ngx_http_vhost_traffic_status_module.h"


static ngx_int_t ngx_http_vts_init_zone(ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_vts_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_vts_log_handler(ngx_http_request_t *r);

static char *ngx_http_vts_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_vts_display(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_vts_filter_by_set_key(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_vts_lone_variable(ngx_conf_t *cf, ngx_str_t *value);
static char *ngx_http_vts_filter_max_node(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_vts_histogram_buckets(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_vts_ignore_status(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_vts_average_method(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_vts_preconfiguration(ngx_conf_t *cf);

static void *ngx_http_vts_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_vts_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_vts_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_vts_init(ngx_conf_t *cf);


static ngx_conf_enum_t  ngx_http_vts_display_formats[] = {
    { ngx_string("json"), NGX_HTTP_VTS_FORMAT_JSON },
    { ngx_string("prometheus"), NGX_HTTP_VTS_FORMAT_PROMETHEUS },
    { ngx_string("html"), NGX_HTTP_VTS_FORMAT_HTML },
    { ngx_string("jsonp"), NGX_HTTP_VTS_FORMAT_JSONP },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_vts_commands[] = {

    { ngx_string("vhost_traffic_status_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_vts_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, enable),
      NULL },

    { ngx_string("vhost_traffic_status_filter_by_host"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, filter_by_host),
      NULL },

    { ngx_string("vhost_traffic_status_filter"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, filter),
      NULL },

    { ngx_string("vhost_traffic_status_filter_by_set_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF
      |NGX_CONF_TAKE12,
      ngx_http_vts_filter_by_set_key,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_filter_check_duplicate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, filter_check_duplicate),
      NULL },

    { ngx_string("vhost_traffic_status_filter_max_node"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_vts_filter_max_node,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, limit),
      NULL },

    { ngx_string("vhost_traffic_status_limit_traffic"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_vts_limit_traffic,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_limit_traffic_by_set_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE23,
      ngx_http_vts_limit_traffic,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_limit_check_duplicate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, limit_check_duplicate),
      NULL },

    { ngx_string("vhost_traffic_status_bypass_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, bypass_limit),
      NULL },

    { ngx_string("vhost_traffic_status_bypass_stats"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, bypass_stats),
      NULL },

    { ngx_string("vhost_traffic_status_histogram_buckets"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_vts_histogram_buckets,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_set_by_filter"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF
      |NGX_HTTP_LIF_CONF|NGX_CONF_TAKE2,
      ngx_http_vts_set_by_filter,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_display_sum_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, sum_key),
      NULL },

    { ngx_string("vhost_traffic_status_display_jsonp"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, jsonp),
      NULL },

    { ngx_string("vhost_traffic_status_dump"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_vts_dump,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_stats_by_upstream"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, stats_by_upstream),
      NULL },

    { ngx_string("vhost_traffic_status_ignore_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_vts_ignore_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_average_method"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_vts_average_method,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_average_period"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_vts_average_method,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_display"),
      NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_vts_display,
      0,
      0,
      NULL },

    { ngx_string("vhost_traffic_status_display_format"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_vts_loc_conf_t, format),
      &ngx_http_vts_display_formats },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_vts_module_ctx = {
    ngx_http_vts_preconfiguration,         /* preconfiguration */
    ngx_http_vts_init,                     /* postconfiguration */

    ngx_http_vts_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_vts_create_loc_conf,          /* create location configuration */
    ngx_http_vts_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_vhost_traffic_status_module = {
    NGX_MODULE_V1,
    &ngx_http_vts_module_ctx,              /* module context */
    ngx_http_vts_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_vts_dump_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_vts_dump_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* a filter key of one request, evaluated */
typedef struct {
    u_char                     *key;
    size_t                      len;
    size_t                      glen;
    ngx_uint_t                  kind;
    void                       *site;              /* its definition */
} ngx_http_vts_fkey_t;


/* per worker: the "zone is full" error is logged once per process */
static ngx_uint_t  ngx_http_vts_full_logged;


static uint32_t
ngx_http_vts_hash(ngx_uint_t kind, u_char *key, size_t len)
{
    /*
     * MurmurHash2 reads four bytes a step where CRC32 reads one: every
     * request hashes the key of each entry it counts.  The kind is mixed in
     * so that equal keys of different kinds spread apart.
     */
    return ngx_murmur_hash2(key, len) ^ ((uint32_t) kind * 0x9e3779b1);
}


static ngx_int_t
ngx_http_vts_node_cmp(ngx_http_vts_node_t *a, ngx_uint_t kind, u_char *key,
    size_t len, size_t glen)
{
    if (a->kind != kind) {
        return (a->kind < kind) ? -1 : 1;
    }

    if (a->len != len) {
        return (a->len < len) ? -1 : 1;
    }

    if (a->glen != glen) {
        return (a->glen < glen) ? -1 : 1;
    }

    return ngx_memcmp(a->data, key, len);
}


static void
ngx_http_vts_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t    **p;
    ngx_http_vts_node_t   *vn, *vt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            vn = (ngx_http_vts_node_t *) node;
            vt = (ngx_http_vts_node_t *) temp;

            p = (ngx_http_vts_node_cmp(vt, vn->kind, vn->data, vn->len,
                                       vn->glen) > 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/* Finds the entry for a key; the slab mutex must be held. */

ngx_http_vts_node_t *
ngx_http_vts_node_find_locked(ngx_http_vts_ctx_t *ctx, ngx_uint_t kind,
    u_char *key, size_t len, size_t glen)
{
    uint32_t              hash;
    ngx_int_t             rc;
    ngx_rbtree_node_t    *node, *sentinel;
    ngx_http_vts_node_t  *vn;

    hash = ngx_http_vts_hash(kind, key, len);

    node = ctx->sh->rbtree.root;
    sentinel = ctx->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        vn = (ngx_http_vts_node_t *) node;

        rc = ngx_http_vts_node_cmp(vn, kind, key, len, glen);

        if (rc == 0) {
            return vn;
        }

        node = (rc > 0) ? node->left : node->right;
    }

    return NULL;
}


void
ngx_http_vts_node_delete_locked(ngx_http_vts_ctx_t *ctx,
    ngx_http_vts_node_t *vn)
{
    ngx_rbtree_delete(&ctx->sh->rbtree, &vn->node);
    ngx_slab_free_locked(ctx->shpool, vn);
    ctx->sh->nodes--;
    ctx->sh->generation++;
}


/*
 * Finds or creates the entry for a key; the slab mutex must be held.
 * Returns NULL when the zone has no room for a new key.
 */

ngx_http_vts_node_t *
ngx_http_vts_node_get_locked(ngx_http_vts_ctx_t *ctx, ngx_uint_t kind,
    u_char *key, size_t len, size_t glen)
{
    size_t                n;
    ngx_http_vts_node_t  *vn;

    vn = ngx_http_vts_node_find_locked(ctx, kind, key, len, glen);
    if (vn != NULL) {
        return vn;
    }

    n = offsetof(ngx_http_vts_node_t, data) + len;

    vn = ngx_slab_alloc_locked(ctx->shpool, n);
    if (vn == NULL) {
        return NULL;
    }

    ngx_memzero(vn, offsetof(ngx_http_vts_node_t, data));

    vn->node.key = ngx_http_vts_hash(kind, key, len);
    vn->kind = kind;
    vn->len = len;
    vn->glen = glen;
    ngx_memcpy(vn->data, key, len);

    ngx_rbtree_insert(&ctx->sh->rbtree, &vn->node);
    ctx->sh->nodes++;

    return vn;
}


/*
 * Every request looks up the same few entries again and again: its server,
 * the sum, its upstream peer, usually the same filter keys.  Each lookup
 * site remembers, per worker, the node it found last, in a slot chosen by
 * a pointer that names the site (a server's configuration, a filter's
 * definition, a peer): when the node still holds the key asked for, the
 * hash and the tree walk are skipped.  The key is compared, so a slot can
 * never answer for another key, and nodes are only ever freed by
 * ngx_http_vts_node_delete_locked, whose generation bump makes every
 * worker forget what it remembered.
 */

#define NGX_HTTP_VTS_REMEMBERED_SLOTS  64

typedef struct {
    ngx_http_vts_node_t        *vn;
    ngx_http_vts_shctx_t       *sh;
    ngx_uint_t                  generation;
    volatile ngx_cycle_t       *cycle;             /* a reload forgets all */
} ngx_http_vts_remembered_t;

static ngx_http_vts_remembered_t
    ngx_http_vts_remembered[NGX_HTTP_VTS_REMEMBERED_SLOTS];


static ngx_http_vts_node_t *
ngx_http_vts_node_get_remembered_locked(ngx_http_vts_ctx_t *ctx,
    ngx_uint_t kind, u_char *key, size_t len, size_t glen, void *site)
{
    ngx_http_vts_node_t        *vn;
    ngx_http_vts_remembered_t  *slot;

    slot = &ngx_http_vts_remembered[((uintptr_t) site >> 4)
                                    % NGX_HTTP_VTS_REMEMBERED_SLOTS];
    vn = slot->vn;

    if (vn != NULL && slot->sh == ctx->sh && slot->cycle == ngx_cycle
        && slot->generation == ctx->sh->generation
        && ngx_http_vts_node_cmp(vn, kind, key, len, glen) == 0)
    {
        return vn;
    }

    vn = ngx_http_vts_node_get_locked(ctx, kind, key, len, glen);

    if (vn != NULL) {
        slot->vn = vn;
        slot->sh = ctx->sh;
        slot->generation = ctx->sh->generation;
        slot->cycle = ngx_cycle;
    }

    return vn;
}


/* does a filter group fall under vhost_traffic_status_filter_max_node? */

static ngx_uint_t
ngx_http_vts_max_node_applies(ngx_http_vts_main_conf_t *vmcf, u_char *group,
    size_t glen)
{
    ngx_str_t   *m;
    ngx_uint_t   i;

    if (vmcf->filter_max_node == 0) {
        return 0;
    }

    if (vmcf->filter_max_match == NULL) {
        return 1;
    }

    m = vmcf->filter_max_match->elts;

    for (i = 0; i < vmcf->filter_max_match->nelts; i++) {
        if (glen >= m[i].len && ngx_strncmp(group, m[i].data, m[i].len) == 0) {
            return 1;
        }
    }

    return 0;
}


/*
 * Before a new filter node of a limited group is created: while the
 * limited filter nodes are at the limit, the least recently updated one
 * goes.
 */

static void
ngx_http_vts_filter_evict_locked(ngx_http_vts_ctx_t *ctx,
    ngx_http_vts_main_conf_t *vmcf)
{
    ngx_uint_t            n;
    ngx_rbtree_t         *tree;
    ngx_rbtree_node_t    *node;
    ngx_http_vts_node_t  *vn, *oldest;

    tree = &ctx->sh->rbtree;

    for ( ;; ) {
        n = 0;
        oldest = NULL;

        if (tree->root == tree->sentinel) {
            return;
        }

        for (node = ngx_rbtree_min(tree->root, tree->sentinel);
             node != NULL;
             node = ngx_rbtree_next(tree, node))
        {
            vn = (ngx_http_vts_node_t *) node;

            if (vn->kind != NGX_HTTP_VTS_KIND_FILTER
                || !ngx_http_vts_max_node_applies(vmcf, vn->data, vn->glen))
            {
                continue;
            }

            n++;

            if (oldest == NULL
                || vn->counters.last_msec < oldest->counters.last_msec)
            {
                oldest = vn;
            }
        }

        if (n < vmcf->filter_max_node || oldest == NULL) {
            return;
        }

        ngx_http_vts_node_delete_locked(ctx, oldest);
    }
}


static void
ngx_http_vts_bucket(ngx_http_vts_counters_t *c, uint64_t *counts,
    ngx_msec_t msec)
{
    ngx_uint_t  i;

    for (i = 0; i < c->nbuckets; i++) {
        if (msec <= c->bucket_msec[i]) {
            counts[i]++;
            return;
        }
    }
}


/* which moving windows a count adds its times to */
#define NGX_HTTP_VTS_SAMPLE_REQUEST   1
#define NGX_HTTP_VTS_SAMPLE_RESPONSE  2


/* what one request (or one upstream attempt of it) adds to a zone entry */
typedef struct {
    ngx_uint_t                  status;
    ngx_msec_t                  request_msec;
    ngx_msec_t                  response_msec;
    off_t                       in;
    off_t                       out;
    ngx_uint_t                  cache_status;      /* 0: no cache used */
    ngx_uint_t                  samples;           /* SAMPLE_* windows */
    uint64_t                    now;               /* epoch ms */
} ngx_http_vts_count_t;


static void
ngx_http_vts_count(ngx_http_vts_counters_t *c, ngx_http_vts_buckets_t *b,
    ngx_http_vts_count_t *n)
{
    ngx_uint_t  status;
    ngx_msec_t  request_msec, response_msec;

    status = n->status;
    request_msec = n->request_msec;
    response_msec = n->response_msec;

    if (n->samples & NGX_HTTP_VTS_SAMPLE_REQUEST) {
        ngx_http_vts_window_add(&c->request_window, n->now, request_msec);
    }

    if (n->samples & NGX_HTTP_VTS_SAMPLE_RESPONSE) {
        ngx_http_vts_window_add(&c->response_window, n->now, response_msec);
    }

    if (n->cache_status >= 1
        && n->cache_status <= NGX_HTTP_VTS_CACHE_STATUSES)
    {
        c->cache[n->cache_status - 1]++;
    }

    c->requests++;
    c->last_msec = ngx_current_msec;

    if (c->nbuckets == 0 && b != NULL && b->n) {
        c->nbuckets = b->n;
        ngx_memcpy(c->bucket_msec, b->msec, b->n * sizeof(uint32_t));
    }

    if (c->nbuckets) {
        ngx_http_vts_bucket(c, c->request_buckets, request_msec);
        ngx_http_vts_bucket(c, c->response_buckets, response_msec);
    }

    if (status >= 100 && status < 600) {
        c->responses[status / 100 - 1]++;
    }

    c->request_msec += request_msec;
    c->response_msec += response_msec;

    if (n->in > 0) {
        c->in_bytes += (uint64_t) n->in;
    }

    if (n->out > 0) {
        c->out_bytes += (uint64_t) n->out;
    }
}


/*
 * The server zone key of a request: the first server_name, or the Host
 * with vhost_traffic_status_filter_by_host on.
 */

ngx_int_t
ngx_http_vts_server_key(ngx_http_request_t *r, ngx_str_t *host)
{
    ngx_http_vts_loc_conf_t   *vlcf;
    ngx_http_core_srv_conf_t  *cscf;

    vlcf = ngx_http_get_module_loc_conf(r, ngx_http_vhost_traffic_status_module);

    host->len = 0;
    host->data = NULL;

    if (vlcf->filter_by_host && r->headers_in.server.len) {
        *host = r->headers_in.server;
    }

    if (host->len == 0) {
        cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);

        if (cscf != NULL) {
            *host = cscf->server_name;
        }
    }

    if (host->len == 0) {
        ngx_str_set(host, NGX_HTTP_VTS_EMPTY_SERVER_NAME);
    }

    if (host->len > NGX_HTTP_VTS_MAX_KEY_LEN) {
        host->len = NGX_HTTP_VTS_MAX_KEY_LEN;
    }

    return NGX_OK;
}


/*
 * Evaluates one filter_by_set_key.  With a name, the node is the key in
 * the filter group "name"; without one, the key is a server zone.  An
 * empty key is not counted.
 */

static ngx_int_t
ngx_http_vts_filter_eval(ngx_http_request_t *r, ngx_http_vts_filter_key_t *f,
    ngx_http_vts_fkey_t *out)
{
    ngx_str_t                   key, name;
    ngx_http_variable_value_t  *vv;

    if (f->key_index != NGX_ERROR) {
        /* what the complex value would give, without copying it */
        vv = ngx_http_get_flushed_variable(r, f->key_index);

        if (vv == NULL || vv->not_found) {
            return NGX_DECLINED;
        }

        key.data = vv->data;
        key.len = vv->len;

    } else if (ngx_http_complex_value(r, &f->key, &key) != NGX_OK) {
        return NGX_ERROR;
    }

    if (key.len == 0) {
        return NGX_DECLINED;
    }

    name.len = 0;

    if (f->has_name) {
        if (ngx_http_complex_value(r, &f->name, &name) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    key.len = ngx_min(key.len, NGX_HTTP_VTS_MAX_KEY_LEN);
    name.len = ngx_min(name.len, NGX_HTTP_VTS_MAX_KEY_LEN);

    out->key = ngx_pnalloc(r->pool, name.len + key.len);
    if (out->key == NULL) {
        return NGX_ERROR;
    }

    if (name.len) {
        ngx_memcpy(out->key, name.data, name.len);
    }

    ngx_memcpy(out->key + name.len, key.data, key.len);

    out->len = name.len + key.len;
    out->glen = name.len;
    out->site = f;
    out->kind = f->has_name ? NGX_HTTP_VTS_KIND_FILTER
                            : NGX_HTTP_VTS_KIND_SERVER;

    if (out->kind == NGX_HTTP_VTS_KIND_FILTER && name.len == 0) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* the proxy_cache zone a request used, and its sizes then */
typedef struct {
    ngx_str_t                   name;              /* empty: none */
    uint64_t                    max_size;          /* bytes */
    uint64_t                    used_size;
} ngx_http_vts_cache_use_t;


/*
 * The cache status of a request (NGX_HTTP_CACHE_MISS ..), 0 when it used
 * no cache; "cache" names the cache zone it went through.
 */

static ngx_uint_t
ngx_http_vts_cache_status(ngx_http_request_t *r,
    ngx_http_vts_cache_use_t *cache)
{
    ngx_memzero(cache, sizeof(ngx_http_vts_cache_use_t));

#if (NGX_HTTP_CACHE)
    {
    ngx_http_file_cache_t  *fc;

    if (r->upstream == NULL || r->upstream->cache_status == 0) {
        return 0;
    }

    if (r->cache != NULL && r->cache->file_cache != NULL
        && r->cache->file_cache->shm_zone != NULL
        && r->cache->file_cache->shm_zone->shm.name.len
           <= NGX_HTTP_VTS_MAX_KEY_LEN)
    {
        fc = r->cache->file_cache;
        cache->name = fc->shm_zone->shm.name;
        cache->max_size = (uint64_t) fc->max_size * fc->bsize;
        cache->used_size = (fc->sh != NULL)
                           ? (uint64_t) fc->sh->size * fc->bsize : 0;
    }

    return r->upstream->cache_status;
    }
#else
    return 0;
#endif
}


/* does vhost_traffic_status_ignore_status leave this status uncounted? */

static ngx_inline ngx_uint_t
ngx_http_vts_status_ignored(ngx_http_vts_loc_conf_t *vlcf, ngx_uint_t status)
{
    return status >= 100 && status < 600
           && (vlcf->ignore_status >> (status / 100 - 1)) & 1;
}


static ngx_int_t
ngx_http_vts_log_handler(ngx_http_request_t *r)
{
    off_t                          in, out;
    size_t                         glen, plen;
    u_char                        *key;
    ngx_str_t                      host, group;
    ngx_uint_t                     i, first, status, st, kind, full;
    ngx_uint_t                     ignored;
    ngx_msec_t                     req_ms, resp_ms;
    ngx_http_vts_count_t           cn, attempt;
    ngx_time_t                    *tp;
    ngx_msec_int_t                 ms;
    ngx_http_upstream_t           *u;
    ngx_http_vts_ctx_t            *ctx;
    ngx_uint_t                     nfk;
    ngx_http_vts_fkey_t           *fk;
    ngx_http_vts_node_t           *vn;
    ngx_http_vts_loc_conf_t       *vlcf;
    ngx_http_vts_main_conf_t      *vmcf;
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_upstream_state_t     *state;
    ngx_http_vts_filter_key_t     *fdef;
    ngx_http_vts_cache_use_t       cache;

    vmcf = ngx_http_get_module_main_conf(r,
                                         ngx_http_vhost_traffic_status_module);

    if (vmcf == NULL || vmcf->shm_zone == NULL) {
        return NGX_OK;
    }

    vlcf = ngx_http_get_module_loc_conf(r, ngx_http_vhost_traffic_status_module);

    if (!vlcf->enable || vlcf->bypass_stats) {
        return NGX_OK;
    }

    if (r != r->main) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        if (!clcf->log_subrequest) {
            return NGX_OK;
        }
    }

    ctx = vmcf->shm_zone->data;

    if (ctx == NULL || ctx->sh == NULL) {
        return NGX_OK;
    }

    /* the same status the access log shows */

    if (r->err_status) {
        status = r->err_status;

    } else {
        status = r->headers_out.status;
    }

    /*
     * an ignored status leaves the request out of its server, sum, filter
     * and cache zones; each upstream attempt is judged by its own status
     */
    ignored = ngx_http_vts_status_ignored(vlcf, status);

    tp = ngx_timeofday();
    ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                           + (tp->msec - r->start_msec));
    req_ms = (ngx_msec_t) ngx_max(ms, 0);

    in = r->request_length;
    out = r->connection->sent;

    ngx_http_vts_server_key(r, &host);

    /* filter keys, evaluated before the lock is taken */

    nfk = 0;
    fk = NULL;

    if (!ignored
        && vlcf->filter && vlcf->filters != NULL && vlcf->filters->nelts)
    {
        fdef = vlcf->filters->elts;

        fk = ngx_pnalloc(r->pool,
                         vlcf->filters->nelts * sizeof(ngx_http_vts_fkey_t));
        if (fk == NULL) {
            return NGX_OK;
        }

        for (i = 0; i < vlcf->filters->nelts; i++) {
            if (ngx_http_vts_filter_eval(r, &fdef[i], &fk[nfk]) == NGX_OK) {
                nfk++;
            }
        }
    }

    /* upstream group of the last upstream used by this request */

    ngx_str_set(&group, NGX_HTTP_VTS_NOGROUPS_NAME);
    kind = NGX_HTTP_VTS_KIND_NOGROUPS;

    u = r->upstream;

    if (u != NULL && u->upstream != NULL
        && (u->upstream->flags & NGX_HTTP_UPSTREAM_CREATE)
        && u->upstream->host.len > 0
        && u->upstream->host.len <= NGX_HTTP_VTS_MAX_KEY_LEN)
    {
        group = u->upstream->host;
        kind = NGX_HTTP_VTS_KIND_UPSTREAM;
    }

    key = NULL;

    if (vlcf->stats_by_upstream
        && r->upstream_states != NULL && r->upstream_states->nelts > 0)
    {
        /* room for the longest peer name: usually far below the key limit,
         * which would make this a separate malloc()ed block of the pool */
        state = r->upstream_states->elts;
        plen = 0;

        for (i = 0; i < r->upstream_states->nelts; i++) {
            if (state[i].peer != NULL && state[i].peer->len > plen) {
                plen = state[i].peer->len;
            }
        }

        key = ngx_pnalloc(r->pool,
                          group.len + ngx_min(plen, NGX_HTTP_VTS_MAX_KEY_LEN));
        if (key == NULL) {
            return NGX_OK;
        }
    }

    if (ignored && key == NULL) {
        return NGX_OK;
    }

    full = 0;

    ngx_memzero(&cn, sizeof(ngx_http_vts_count_t));
    cn.status = status;
    cn.request_msec = req_ms;
    cn.in = in;
    cn.out = out;
    cn.samples = NGX_HTTP_VTS_SAMPLE_REQUEST;
    cn.now = ngx_http_vts_now_msec();
    cn.cache_status = ngx_http_vts_cache_status(r, &cache);

    ngx_shmtx_lock(&ctx->shpool->mutex);

    if (!ignored) {
        vn = ngx_http_vts_node_get_remembered_locked(ctx,
                                                     NGX_HTTP_VTS_KIND_SERVER,
                                                     host.data, host.len, 0,
                                                     vlcf);
        if (vn != NULL) {
            ngx_http_vts_count(&vn->counters, vlcf->buckets, &cn);

        } else {
            full = 1;
        }

        vn = ngx_http_vts_node_get_remembered_locked(ctx,
                                             NGX_HTTP_VTS_KIND_SUM,
                                             (u_char *) NGX_HTTP_VTS_SUM_KEY,
                                             sizeof(NGX_HTTP_VTS_SUM_KEY) - 1,
                                             0, vmcf);
        if (vn != NULL) {
            ngx_http_vts_count(&vn->counters, vlcf->buckets, &cn);

        } else {
            full = 1;
        }
    }

    for (i = 0; i < nfk; i++) {

        if (fk[i].kind == NGX_HTTP_VTS_KIND_FILTER
            && ngx_http_vts_max_node_applies(vmcf, fk[i].key, fk[i].glen)
            && ngx_http_vts_node_find_locked(ctx, fk[i].kind, fk[i].key,
                                             fk[i].len, fk[i].glen)
               == NULL)
        {
            ngx_http_vts_filter_evict_locked(ctx, vmcf);
        }

        vn = ngx_http_vts_node_get_remembered_locked(ctx, fk[i].kind,
                                                     fk[i].key, fk[i].len,
                                                     fk[i].glen, fk[i].site);
        if (vn != NULL) {
            ngx_http_vts_count(&vn->counters, vlcf->buckets, &cn);

        } else {
            full = 1;
        }
    }

    if (key != NULL) {

        state = r->upstream_states->elts;

        /*
         * a state without a peer separates the attempts of different
         * upstreams used by one request (e.g. after X-Accel-Redirect);
         * only the last upstream's attempts are attributed, because only
         * its group is still known here
         */

        first = 0;

        for (i = r->upstream_states->nelts; i > 0; i--) {
            if (state[i - 1].peer == NULL) {
                first = i;
                break;
            }
        }

        ngx_memcpy(key, group.data, group.len);
        glen = group.len;

        for (i = first; i < r->upstream_states->nelts; i++) {

            if (state[i].peer == NULL || state[i].peer->len == 0) {
                continue;
            }

            st = state[i].status;

            if (i == r->upstream_states->nelts - 1 && st == 0) {
                /* the attempt that produced the response */
                st = status;
            }

            if (ngx_http_vts_status_ignored(vlcf, st)) {
                continue;
            }

            plen = ngx_min(state[i].peer->len, NGX_HTTP_VTS_MAX_KEY_LEN);
            ngx_memcpy(key + glen, state[i].peer->data, plen);

            vn = ngx_http_vts_node_get_remembered_locked(ctx, kind, key,
                                                         glen + plen, glen,
                                                         state[i].peer);
            if (vn == NULL) {
                full = 1;
                continue;
            }

            ms = (ngx_msec_int_t) state[i].response_time;
            resp_ms = (ngx_msec_t) ngx_max(ms, 0);

            if (i == r->upstream_states->nelts - 1) {

                attempt = cn;
                attempt.status = st;
                attempt.response_msec = resp_ms;
                attempt.cache_status = 0;
                attempt.samples = NGX_HTTP_VTS_SAMPLE_REQUEST
                                  |NGX_HTTP_VTS_SAMPLE_RESPONSE;
                ngx_http_vts_count(&vn->counters, vlcf->buckets, &attempt);

            } else {
                /* an earlier, failed attempt */
                ngx_memzero(&attempt, sizeof(ngx_http_vts_count_t));
                attempt.status = st;
                attempt.response_msec = resp_ms;
                attempt.samples = NGX_HTTP_VTS_SAMPLE_RESPONSE;
                attempt.now = cn.now;
                ngx_http_vts_count(&vn->counters, vlcf->buckets, &attempt);
            }
        }
    }

    if (!ignored && cache.name.len) {
        vn = ngx_http_vts_node_get_locked(ctx, NGX_HTTP_VTS_KIND_CACHE,
                                          cache.name.data, cache.name.len, 0);
        if (vn != NULL) {
            attempt = cn;
            attempt.samples = 0;
            ngx_http_vts_count(&vn->counters, NULL, &attempt);
            vn->counters.cache_max_size = cache.max_size;
            vn->counters.cache_used_size = cache.used_size;

        } else {
            full = 1;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (full && !ngx_http_vts_full_logged) {
        ngx_http_vts_full_logged = 1;

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "vhost_traffic_status: shared zone \"%V\" is full, "
                      "new keys are not counted (logged once per worker)",
                      &vmcf->shm_zone->shm.name);
    }

    return NGX_OK;
}


static int ngx_libc_cdecl
ngx_http_vts_entry_cmp(const void *one, const void *two)
{
    int                           rc;
    size_t                        n;
    const ngx_http_vts_entry_t   *a, *b;

    a = one;
    b = two;

    if (a->kind != b->kind) {
        return (a->kind < b->kind) ? -1 : 1;
    }

    n = ngx_min(a->group.len, b->group.len);
    rc = ngx_memcmp(a->group.data, b->group.data, n);

    if (rc != 0) {
        return rc;
    }

    if (a->group.len != b->group.len) {
        return (a->group.len < b->group.len) ? -1 : 1;
    }

    n = ngx_min(a->name.len, b->name.len);
    rc = ngx_memcmp(a->name.data, b->name.data, n);

    if (rc != 0) {
        return rc;
    }

    if (a->name.len != b->name.len) {
        return (a->name.len < b->name.len) ? -1 : 1;
    }

    return 0;
}


/*
 * Every peer of every upstream {} block is listed, also before its first
 * request (and when it is down): counts them (snap == NULL), or adds a
 * zero entry for each one the zone has no node for yet.
 */

static ngx_uint_t
ngx_http_vts_configured_peers(ngx_http_request_t *r,
    ngx_http_vts_snapshot_t *snap, ngx_uint_t max)
{
    ngx_uint_t                       i, j, k, m, n, have;
    ngx_http_vts_entry_t            *e;
    ngx_http_upstream_server_t      *us;
    ngx_http_upstream_srv_conf_t   **uscfp, *uscf;
    ngx_http_upstream_main_conf_t   *umcf;

    umcf = ngx_http_get_module_main_conf(r, ngx_http_upstream_module);
    if (umcf == NULL) {
        return 0;
    }

    n = 0;
    have = (snap != NULL) ? snap->nentries : 0;
    uscfp = umcf->upstreams.elts;

    for (i = 0; i < umcf->upstreams.nelts; i++) {
        uscf = uscfp[i];

        if (!(uscf->flags & NGX_HTTP_UPSTREAM_CREATE)
            || uscf->servers == NULL
            || uscf->host.len == 0
            || uscf->host.len > NGX_HTTP_VTS_MAX_KEY_LEN)
        {
            continue;
        }

        us = uscf->servers->elts;

        for (j = 0; j < uscf->servers->nelts; j++) {
            for (k = 0; k < us[j].naddrs; k++) {

                if (snap == NULL) {
                    n++;
                    continue;
                }

                for (m = 0; m < have; m++) {
                    e = &snap->entries[m];

                    if (e->kind == NGX_HTTP_VTS_KIND_UPSTREAM
                        && e->group.len == uscf->host.len
                        && e->name.len == us[j].addrs[k].name.len
                        && ngx_strncmp(e->group.data, uscf->host.data,
                                       e->group.len) == 0
                        && ngx_strncmp(e->name.data,
                                       us[j].addrs[k].name.data,
                                       e->name.len) == 0)
                    {
                        break;
                    }
                }

                if (m < have || snap->nentries >= max) {
                    continue;
                }

                e = &snap->entries[snap->nentries++];
                ngx_memzero(e, sizeof(ngx_http_vts_entry_t));
                e->kind = NGX_HTTP_VTS_KIND_UPSTREAM;
                e->group = uscf->host;
                e->name = us[j].addrs[k].name;
                n++;
            }
        }
    }

    return n;
}


/*
 * Copies all entries out of the shared zone (under the lock) into the
 * request pool and sorts them by kind, group and name.
 */

ngx_int_t
ngx_http_vts_snapshot(ngx_http_request_t *r, ngx_http_vts_snapshot_t *snap)
{
    u_char                    *p;
    ngx_uint_t                 n, npeers;
    ngx_rbtree_t              *tree;
    ngx_rbtree_node_t         *node;
    ngx_http_vts_ctx_t        *ctx;
    ngx_http_vts_node_t       *vn;
    ngx_http_vts_entry_t      *e;
    ngx_http_vts_main_conf_t  *vmcf;

    vmcf = ngx_http_get_module_main_conf(r,
                                         ngx_http_vhost_traffic_status_module);

    ngx_memzero(snap, sizeof(ngx_http_vts_snapshot_t));

    npeers = ngx_http_vts_configured_peers(r, NULL, 0);

    ctx = vmcf->shm_zone->data;

    snap->max_size = vmcf->shm_zone->shm.size;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    snap->free_size = ctx->shpool->pfree * ngx_pagesize;
    snap->used_size = snap->max_size - snap->free_size;
    snap->used_node = ctx->sh->nodes;

    n = ctx->sh->nodes + npeers;

    snap->entries = ngx_palloc(r->pool,
                               (n ? n : 1) * sizeof(ngx_http_vts_entry_t));
    if (snap->entries == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_ERROR;
    }

    tree = &ctx->sh->rbtree;

    if (tree->root != tree->sentinel) {

        for (node = ngx_rbtree_min(tree->root, tree->sentinel);
             node != NULL && snap->nentries < n;
             node = ngx_rbtree_next(tree, node))
        {
            vn = (ngx_http_vts_node_t *) node;

            p = ngx_pnalloc(r->pool, vn->len ? vn->len : 1);
            if (p == NULL) {
                ngx_shmtx_unlock(&ctx->shpool->mutex);
                return NGX_ERROR;
            }

            ngx_memcpy(p, vn->data, vn->len);

            e = &snap->entries[snap->nentries++];

            e->kind = vn->kind;
            e->group.data = p;
            e->group.len = vn->glen;
            e->name.data = p + vn->glen;
            e->name.len = vn->len - vn->glen;
            e->c = vn->counters;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    (void) ngx_http_vts_configured_peers(r, snap, n);

    if (snap->nentries > 1) {
        ngx_qsort(snap->entries, snap->nentries, sizeof(ngx_http_vts_entry_t),
                  ngx_http_vts_entry_cmp);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_vts_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_vts_ctx_t  *octx = data;

    size_t               len;
    ngx_http_vts_ctx_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        /* reload with an unchanged zone: keep the counters */
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_alloc(ctx->shpool, sizeof(ngx_http_vts_shctx_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ngx_rbtree_init(&ctx->sh->rbtree, &ctx->sh->sentinel,
                    ngx_http_vts_rbtree_insert_value);
    ctx->sh->nodes = 0;
    ctx->sh->generation = 0;

    len = sizeof(" in vhost_traffic_status zone \"\"") + shm_zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in vhost_traffic_status zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is reported by the module itself, once */
    ctx->shpool->log_nomem = 0;

    /* the sum zone always exists */

    ngx_shmtx_lock(&ctx->shpool->mutex);

    (void) ngx_http_vts_node_get_locked(ctx, NGX_HTTP_VTS_KIND_SUM,
                                        (u_char *) NGX_HTTP_VTS_SUM_KEY,
                                        sizeof(NGX_HTTP_VTS_SUM_KEY) - 1, 0);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (ctx->dump_file.len) {
        ngx_http_vts_dump_restore(ctx, &ctx->dump_file, shm_zone->shm.log);
    }

    return NGX_OK;
}


static char *
ngx_http_vts_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_main_conf_t *vmcf = conf;

    u_char              *p, *last;
    ssize_t              size;
    ngx_str_t           *value, name, s;
    ngx_uint_t           i;
    ngx_http_vts_ctx_t  *ctx;

    if (vmcf->shm_zone != NULL) {
        return "is duplicate";
    }

    ngx_str_set(&name, NGX_HTTP_VTS_DEFAULT_SHM_NAME);
    size = NGX_HTTP_VTS_DEFAULT_SHM_SIZE;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "shared:", 7) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        p = value[i].data + 7;
        last = value[i].data + value[i].len;

        name.data = p;

        p = ngx_strlchr(p, last, ':');

        if (p == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid shared size \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        name.len = p - name.data;

        if (name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid shared name \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        s.data = p + 1;
        s.len = last - s.data;

        size = (s.len == 0) ? NGX_ERROR : ngx_parse_size(&s);

        if (size == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid shared size \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        if (size < (ssize_t) (8 * ngx_pagesize)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "shared \"%V\" is too small", &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_ctx_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    vmcf->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                           &ngx_http_vhost_traffic_status_module);
    if (vmcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (vmcf->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared \"%V\" is already used", &name);
        return NGX_CONF_ERROR;
    }

    vmcf->shm_zone->init = ngx_http_vts_init_zone;
    vmcf->shm_zone->data = ctx;

    vmcf->shm_name = name;
    vmcf->shm_size = size;

    return NGX_CONF_OK;
}


static char *
ngx_http_vts_display(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_vts_display_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_vts_filter_by_set_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = conf;

    ngx_str_t                         *value;
    ngx_array_t                      **keys;
    ngx_http_vts_filter_key_t         *f;
    ngx_http_vts_main_conf_t          *vmcf;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty key in \"%V\"; give a variable such as "
                           "$uri or a fixed string", &cmd->name);
        return NGX_CONF_ERROR;
    }

    /* at http level the keys apply to every server and location */

    if (cf->cmd_type == NGX_HTTP_MAIN_CONF) {
        vmcf = ngx_http_conf_get_module_main_conf(cf,
                                         ngx_http_vhost_traffic_status_module);
        keys = &vmcf->filter_keys;

    } else {
        keys = &vlcf->filter_keys;
    }

    if (*keys == NULL || *keys == NGX_CONF_UNSET_PTR) {
        *keys = ngx_array_create(cf->pool, 2,
                                 sizeof(ngx_http_vts_filter_key_t));
        if (*keys == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    f = ngx_array_push(*keys);
    if (f == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(f, sizeof(ngx_http_vts_filter_key_t));

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = &f->key;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    f->key_index = ngx_http_vts_lone_variable(cf, &value[1]);

    if (cf->args->nelts == 3) {
        f->has_name = 1;

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = &value[2];
        ccv.complex_value = &f->name;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/*
 * A key that is one variable and nothing else ("$uri", "${uri}"): its
 * index, so that each request reads the variable in place instead of
 * running the complex value's scripts and copying the result.  NGX_ERROR
 * for any other key.
 */

static ngx_int_t
ngx_http_vts_lone_variable(ngx_conf_t *cf, ngx_str_t *value)
{
    size_t     i, start, end;
    ngx_str_t  name;

    if (value->len < 2 || value->data[0] != '$') {
        return NGX_ERROR;
    }

    start = 1;
    end = value->len;

    if (value->data[1] == '{') {
        if (value->data[end - 1] != '}') {
            return NGX_ERROR;
        }

        start = 2;
        end--;
    }

    /* "$1": a regex capture, not a named variable */
    if (end <= start || isdigit(value->data[start])) {
        return NGX_ERROR;
    }

    for (i = start; i < end; i++) {
        if (!(isalnum(value->data[i]) || value->data[i] == '_')) {
            return NGX_ERROR;
        }
    }

    name.data = value->data + start;
    name.len = end - start;

    return ngx_http_get_variable_index(cf, &name);
}


static char *
ngx_http_vts_filter_max_node(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_main_conf_t *vmcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, *m;
    ngx_uint_t   i;

    if (vmcf->filter_max_node != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);

    if (n == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number \"%V\" in \"%V\"; give the "
                           "maximum number of filter nodes (0: no limit)",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    vmcf->filter_max_node = (ngx_uint_t) n;

    for (i = 2; i < cf->args->nelts; i++) {

        if (vmcf->filter_max_match == NULL) {
            vmcf->filter_max_match = ngx_array_create(cf->pool, 2,
                                                      sizeof(ngx_str_t));
            if (vmcf->filter_max_match == NULL) {
                return NGX_CONF_ERROR;
            }
        }

        m = ngx_array_push(vmcf->filter_max_match);
        if (m == NULL) {
            return NGX_CONF_ERROR;
        }

        *m = value[i];
    }

    return NGX_CONF_OK;
}


/* same source text of key and name */

static ngx_uint_t
ngx_http_vts_filter_same(ngx_http_vts_filter_key_t *a,
    ngx_http_vts_filter_key_t *b)
{
    if (a->has_name != b->has_name
        || a->key.value.len != b->key.value.len
        || ngx_strncmp(a->key.value.data, b->key.value.data,
                       a->key.value.len) != 0)
    {
        return 0;
    }

    if (a->has_name
        && (a->name.value.len != b->name.value.len
            || ngx_strncmp(a->name.value.data, b->name.value.data,
                           a->name.value.len) != 0))
    {
        return 0;
    }

    return 1;
}


static ngx_int_t
ngx_http_vts_filters_add(ngx_array_t *to, ngx_array_t *from,
    ngx_flag_t unique)
{
    ngx_uint_t                  i, j;
    ngx_http_vts_filter_key_t  *f, *t, *p;

    if (from == NULL || from == NGX_CONF_UNSET_PTR) {
        return NGX_OK;
    }

    f = from->elts;

    for (i = 0; i < from->nelts; i++) {

        if (unique) {
            t = to->elts;

            for (j = 0; j < to->nelts; j++) {
                if (ngx_http_vts_filter_same(&t[j], &f[i])) {
                    break;
                }
            }

            if (j < to->nelts) {
                continue;
            }
        }

        p = ngx_array_push(to);
        if (p == NULL) {
            return NGX_ERROR;
        }

        *p = f[i];
    }

    return NGX_OK;
}


/*
 * vhost_traffic_status_average_method AMM|WMA [period] and
 * vhost_traffic_status_average_period period: how requestMsec and
 * responseMsec average the moving window, and over how much of it.
 */

static char *
ngx_http_vts_average_method(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = conf;

    ngx_str_t   *value, *period;
    ngx_msec_t   msec;

    value = cf->args->elts;
    period = &value[1];

    if (ngx_strcmp(cmd->name.data, "vhost_traffic_status_average_method")
        == 0)
    {
        if (vlcf->average_method != NGX_CONF_UNSET_UINT) {
            return "is duplicate";
        }

        if (value[1].len == 3
            && ngx_strncasecmp(value[1].data, (u_char *) "AMM", 3) == 0)
        {
            vlcf->average_method = NGX_HTTP_VTS_AVERAGE_AMM;

        } else if (value[1].len == 3
                   && ngx_strncasecmp(value[1].data, (u_char *) "WMA", 3)
                      == 0)
        {
            vlcf->average_method = NGX_HTTP_VTS_AVERAGE_WMA;

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid method \"%V\" in \"%V\"; give AMM "
                               "or WMA", &value[1], &cmd->name);
            return NGX_CONF_ERROR;
        }

        period = (cf->args->nelts == 3) ? &value[2] : NULL;
    }

    if (period == NULL) {
        return NGX_CONF_OK;
    }

    msec = ngx_parse_time(period, 0);

    if (msec == (ngx_msec_t) NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid period \"%V\" in \"%V\"; give a time "
                           "such as 60s", period, &cmd->name);
        return NGX_CONF_ERROR;
    }

    vlcf->average_period = msec;

    return NGX_CONF_OK;
}


/*
 * vhost_traffic_status_ignore_status 1xx 3xx ...: responses of these status
 * classes are left out of every zone, as if they had not been served.
 */

static char *
ngx_http_vts_ignore_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i, mask;

    if (vlcf->ignore_status != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    mask = 0;

    for (i = 1; i < cf->args->nelts; i++) {
        if (value[i].len != 3
            || value[i].data[0] < '1' || value[i].data[0] > '5'
            || (value[i].data[1] | 0x20) != 'x'
            || (value[i].data[2] | 0x20) != 'x')
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid status class \"%V\" in \"%V\"; give "
                               "one or more of 1xx, 2xx, 3xx, 4xx, 5xx",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        mask |= (ngx_uint_t) 1 << (value[i].data[0] - '1');
    }

    vlcf->ignore_status = mask;

    return NGX_CONF_OK;
}


/* vhost_traffic_status_histogram_buckets 0.005 0.01 0.05 ... (seconds) */

static char *
ngx_http_vts_histogram_buckets(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = conf;

    ngx_int_t                ms;
    ngx_str_t               *value;
    ngx_uint_t               i;
    ngx_http_vts_buckets_t  *b;

    if (vlcf->buckets != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts - 1 > NGX_HTTP_VTS_MAX_BUCKETS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" takes at most %d buckets",
                           &cmd->name, NGX_HTTP_VTS_MAX_BUCKETS);
        return NGX_CONF_ERROR;
    }

    b = ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_buckets_t));
    if (b == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {
        ms = ngx_atofp(value[i].data, value[i].len, 3);

        if (ms == NGX_ERROR || ms > 0x7fffffff) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid bucket \"%V\" in \"%V\"; give "
                               "seconds with up to 3 decimals, such as 0.005",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        if (b->n && (uint32_t) ms <= b->msec[b->n - 1]) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "bucket \"%V\" in \"%V\" is not greater "
                               "than the one before it; give the buckets in "
                               "increasing order", &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        b->msec[b->n++] = (uint32_t) ms;
    }

    vlcf->buckets = b;

    return NGX_CONF_OK;
}


static void *
ngx_http_vts_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_vts_main_conf_t  *vmcf;

    vmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_main_conf_t));
    if (vmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     vmcf->shm_zone = NULL;
     *     vmcf->shm_name = { 0, NULL };
     */

    vmcf->shm_size = NGX_CONF_UNSET;
    vmcf->filter_max_node = NGX_CONF_UNSET_UINT;

    return vmcf;
}


static void *
ngx_http_vts_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_vts_loc_conf_t  *vlcf;

    vlcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_loc_conf_t));
    if (vlcf == NULL) {
        return NULL;
    }

    vlcf->enable = NGX_CONF_UNSET;
    vlcf->filter_by_host = NGX_CONF_UNSET;
    vlcf->filter = NGX_CONF_UNSET;
    vlcf->filter_check_duplicate = NGX_CONF_UNSET;
    vlcf->format = NGX_CONF_UNSET_UINT;
    vlcf->filter_keys = NGX_CONF_UNSET_PTR;
    vlcf->limit = NGX_CONF_UNSET;
    vlcf->limit_check_duplicate = NGX_CONF_UNSET;
    vlcf->bypass_limit = NGX_CONF_UNSET;
    vlcf->bypass_stats = NGX_CONF_UNSET;
    vlcf->limits = NGX_CONF_UNSET_PTR;
    vlcf->buckets = NGX_CONF_UNSET_PTR;
    vlcf->sets = NGX_CONF_UNSET_PTR;
    vlcf->stats_by_upstream = NGX_CONF_UNSET;
    vlcf->average_method = NGX_CONF_UNSET_UINT;
    vlcf->average_period = NGX_CONF_UNSET_MSEC;
    vlcf->ignore_status = NGX_CONF_UNSET_UINT;

    return vlcf;
}


static char *
ngx_http_vts_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_vts_loc_conf_t *prev = parent;
    ngx_http_vts_loc_conf_t *conf = child;

    ngx_http_vts_main_conf_t  *vmcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 1);
    ngx_conf_merge_value(conf->filter_by_host, prev->filter_by_host, 0);
    ngx_conf_merge_uint_value(conf->format, prev->format,
                              NGX_HTTP_VTS_FORMAT_JSON);
    ngx_conf_merge_value(conf->filter, prev->filter, 1);
    ngx_conf_merge_value(conf->filter_check_duplicate,
                         prev->filter_check_duplicate, 1);
    ngx_conf_merge_ptr_value(conf->filter_keys, prev->filter_keys, NULL);
    ngx_conf_merge_value(conf->limit, prev->limit, 1);
    ngx_conf_merge_value(conf->limit_check_duplicate,
                         prev->limit_check_duplicate, 1);
    ngx_conf_merge_value(conf->bypass_limit, prev->bypass_limit, 0);
    ngx_conf_merge_value(conf->bypass_stats, prev->bypass_stats, 0);
    ngx_conf_merge_ptr_value(conf->buckets, prev->buckets, NULL);
    ngx_conf_merge_ptr_value(conf->sets, prev->sets, NULL);
    ngx_conf_merge_value(conf->stats_by_upstream, prev->stats_by_upstream, 1);
    ngx_conf_merge_str_value(conf->sum_key, prev->sum_key,
                             NGX_HTTP_VTS_SUM_KEY);
    ngx_conf_merge_str_value(conf->jsonp, prev->jsonp,
                             NGX_HTTP_VTS_DEFAULT_JSONP);
    ngx_conf_merge_uint_value(conf->average_method, prev->average_method,
                              NGX_HTTP_VTS_AVERAGE_AMM);
    ngx_conf_merge_msec_value(conf->average_period, prev->average_period,
                              60000);
    ngx_conf_merge_uint_value(conf->ignore_status, prev->ignore_status, 0);

    if (conf->limits == NGX_CONF_UNSET_PTR) {
        /* inherited: already made unique at its own level */
        conf->limits = (prev->limits == NGX_CONF_UNSET_PTR) ? NULL
                                                            : prev->limits;

    } else if (conf->limit_check_duplicate) {
        conf->limits = ngx_http_vts_limits_unique(cf, conf->limits);
        if (conf->limits == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    /*
     * the keys applied to a request: those of the http level, then those
     * of the server or location (a location without its own keys has the
     * server's); with check_duplicate, the same key and name once
     */

    vmcf = ngx_http_conf_get_module_main_conf(cf,
                                         ngx_http_vhost_traffic_status_module);

    conf->filters = ngx_array_create(cf->pool, 2,
                                     sizeof(ngx_http_vts_filter_key_t));
    if (conf->filters == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_vts_filters_add(conf->filters, vmcf->filter_keys,
                                 conf->filter_check_duplicate) != NGX_OK
        || ngx_http_vts_filters_add(conf->filters, conf->filter_keys,
                                    conf->filter_check_duplicate) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_vts_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_vts_add_variables(cf);
}


static ngx_int_t
ngx_http_vts_init(ngx_conf_t *cf)
{
    ngx_time_t                 *tp;
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;
    ngx_http_vts_main_conf_t   *vmcf;

    vmcf = ngx_http_conf_get_module_main_conf(cf,
                                         ngx_http_vhost_traffic_status_module);

    tp = ngx_timeofday();
    vmcf->start_msec = (uint64_t) tp->sec * 1000 + tp->msec;

    if (vmcf->filter_max_node == NGX_CONF_UNSET_UINT) {
        vmcf->filter_max_node = 0;
    }

    if (vmcf->shm_zone == NULL) {
        return NGX_OK;
    }

    ((ngx_http_vts_ctx_t *) vmcf->shm_zone->data)->dump_file =
                                                            vmcf->dump_file;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_vts_log_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_vts_limit_handler;

    return NGX_OK;
}
