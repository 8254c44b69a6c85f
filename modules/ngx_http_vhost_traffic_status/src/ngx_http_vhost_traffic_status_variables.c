
/*
 * Virtual-host traffic status: the $vts_* variables.  Each reads one
 * counter of the current request's server zone (as the log phase keys
 * it), so in the access or content phase it shows the requests counted
 * before this one.
 */


#include "ngx_http_vhost_traffic_status_module.h"


#define NGX_HTTP_VTS_VAR_REQUESTS      0
#define NGX_HTTP_VTS_VAR_IN_BYTES      1
#define NGX_HTTP_VTS_VAR_OUT_BYTES     2
#define NGX_HTTP_VTS_VAR_1XX           3     /* .. 5xx: 3 .. 7 */
#define NGX_HTTP_VTS_VAR_CACHE         8     /* always 0: no cache counters */
#define NGX_HTTP_VTS_VAR_TIME_COUNTER  9
#define NGX_HTTP_VTS_VAR_TIME          10


static ngx_int_t ngx_http_vts_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_variable_t  ngx_http_vts_vars[] = {

    { ngx_string("vts_request_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_REQUESTS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_in_bytes"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_IN_BYTES, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_out_bytes"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_OUT_BYTES, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_1xx_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_1XX, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_2xx_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_1XX + 1, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_3xx_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_1XX + 2, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_4xx_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_1XX + 3, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_5xx_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_1XX + 4, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_miss_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_bypass_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_expired_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_stale_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_updating_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_revalidated_counter"), NULL,
      ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_hit_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_scarce_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_request_time_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_TIME_COUNTER, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_request_time"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_TIME, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_int_t
ngx_http_vts_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char                    *p;
    uint64_t                   n;
    ngx_str_t                  host;
    ngx_http_vts_ctx_t        *ctx;
    ngx_http_vts_node_t       *vn;
    ngx_http_vts_counters_t    c;
    ngx_http_vts_main_conf_t  *vmcf;

    ngx_memzero(&c, sizeof(ngx_http_vts_counters_t));

    vmcf = ngx_http_get_module_main_conf(r,
                                         ngx_http_vhost_traffic_status_module);

    ctx = (vmcf != NULL && vmcf->shm_zone != NULL) ? vmcf->shm_zone->data
                                                   : NULL;

    if (ctx != NULL && ctx->sh != NULL) {
        ngx_http_vts_server_key(r, &host);

        ngx_shmtx_lock(&ctx->shpool->mutex);

        vn = ngx_http_vts_node_find_locked(ctx, NGX_HTTP_VTS_KIND_SERVER,
                                           host.data, host.len, 0);
        if (vn != NULL) {
            c = vn->counters;
        }

        ngx_shmtx_unlock(&ctx->shpool->mutex);
    }

    switch (data) {

    case NGX_HTTP_VTS_VAR_REQUESTS:
        n = c.requests;
        break;

    case NGX_HTTP_VTS_VAR_IN_BYTES:
        n = c.in_bytes;
        break;

    case NGX_HTTP_VTS_VAR_OUT_BYTES:
        n = c.out_bytes;
        break;

    case NGX_HTTP_VTS_VAR_TIME_COUNTER:
        n = c.request_msec;
        break;

    case NGX_HTTP_VTS_VAR_TIME:
        n = c.requests ? c.request_msec / c.requests : 0;
        break;

    case NGX_HTTP_VTS_VAR_CACHE:
        n = 0;
        break;

    default:
        n = c.responses[data - NGX_HTTP_VTS_VAR_1XX];
        break;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%uL", n) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


ngx_int_t
ngx_http_vts_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_vts_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}
