
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
#define NGX_HTTP_VTS_VAR_TIME_COUNTER  8
#define NGX_HTTP_VTS_VAR_TIME          9
#define NGX_HTTP_VTS_VAR_CACHE         10    /* miss .. scarce: 10 .. 17 */


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
      NGX_HTTP_VTS_VAR_CACHE + 1, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_expired_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE + 2, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_stale_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE + 3, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_updating_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE + 4, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_revalidated_counter"), NULL,
      ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE + 5, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_hit_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE + 6, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_cache_scarce_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_CACHE + 7, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_request_time_counter"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_TIME_COUNTER, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("vts_request_time"), NULL, ngx_http_vts_variable,
      NGX_HTTP_VTS_VAR_TIME, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* "Miss" .. "Scarce" (as in cacheMiss): that cache status counter, else 0 */

static uint64_t
ngx_http_vts_cache_counter(ngx_http_vts_counters_t *c, u_char *status,
    size_t len)
{
    ngx_uint_t  i;

    static ngx_str_t  statuses[NGX_HTTP_VTS_CACHE_STATUSES] = {
        ngx_string("Miss"), ngx_string("Bypass"), ngx_string("Expired"),
        ngx_string("Stale"), ngx_string("Updating"),
        ngx_string("Revalidated"), ngx_string("Hit"), ngx_string("Scarce")
    };

    for (i = 0; i < NGX_HTTP_VTS_CACHE_STATUSES; i++) {
        if (statuses[i].len == len
            && ngx_strncmp(statuses[i].data, status, len) == 0)
        {
            return c->cache[i];
        }
    }

    return 0;
}


/* a window's moving average by the method of the request's location */

static uint64_t
ngx_http_vts_request_average(ngx_http_request_t *r, ngx_http_vts_window_t *w)
{
    ngx_http_vts_loc_conf_t  *vlcf;

    vlcf = ngx_http_get_module_loc_conf(r, ngx_http_vhost_traffic_status_module);

    return ngx_http_vts_window_average(w, vlcf->average_method,
                                       vlcf->average_period,
                                       ngx_http_vts_now_msec());
}


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
        n = ngx_http_vts_request_average(r, &c.request_window);
        break;

    default:
        n = (data >= NGX_HTTP_VTS_VAR_CACHE)
            ? c.cache[data - NGX_HTTP_VTS_VAR_CACHE]
            : c.responses[data - NGX_HTTP_VTS_VAR_1XX];
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


/*
 * vhost_traffic_status_set_by_filter $variable group/zone/name
 *
 * The variable reads, when it is used, one value of one zone: group is
 * server, filter, upstream@group, upstream@alone or cache; zone is as in
 * the control API (filter: group@key, upstream@group: upstream@peer); name
 * is a JSON field name (requestCounter, inBytes, 2xx, responseMsec,
 * weight, ...).  Unknown zones and names give 0.
 */

typedef struct {
    ngx_int_t                   index;
    ngx_http_complex_value_t    spec;
} ngx_http_vts_set_t;


static ngx_int_t
ngx_http_vts_set_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char                    *p, *first, *last, *at, *buf;
    uint64_t                   n;
    ngx_str_t                  spec, group, zone, name, g, z;
    ngx_uint_t                 i, kind, found;
    ngx_http_vts_ctx_t        *ctx;
    ngx_http_vts_set_t        *set;
    ngx_http_vts_node_t       *vn;
    ngx_http_vts_entry_t       e;
    ngx_http_vts_loc_conf_t   *vlcf;
    ngx_http_vts_main_conf_t  *vmcf;
    ngx_http_upstream_server_t  *us;

    n = 0;
    found = 0;

    vlcf = ngx_http_get_module_loc_conf(r, ngx_http_vhost_traffic_status_module);
    vmcf = ngx_http_get_module_main_conf(r,
                                         ngx_http_vhost_traffic_status_module);

    set = NULL;

    if (vlcf->sets != NULL) {
        set = vlcf->sets->elts;

        for (i = 0; i < vlcf->sets->nelts; i++) {
            if (set[i].index == (ngx_int_t) data) {
                break;
            }
        }

        set = (i < vlcf->sets->nelts) ? &set[i] : NULL;
    }

    if (set == NULL || vmcf->shm_zone == NULL
        || ngx_http_complex_value(r, &set->spec, &spec) != NGX_OK)
    {
        goto value;
    }

    first = ngx_strlchr(spec.data, spec.data + spec.len, '/');
    last = NULL;

    for (p = spec.data + spec.len; p > spec.data; p--) {
        if (p[-1] == '/') {
            last = p - 1;
            break;
        }
    }

    if (first == NULL || last == NULL || first == last) {
        goto value;
    }

    group.data = spec.data;
    group.len = first - spec.data;
    zone.data = first + 1;
    zone.len = last - zone.data;
    name.data = last + 1;
    name.len = spec.data + spec.len - name.data;

#define ngx_http_vts_is(s, lit)                                               \
    ((s)->len == sizeof(lit) - 1 && ngx_strncmp((s)->data, lit, (s)->len) == 0)

    ngx_str_null(&g);
    z = zone;

    if (ngx_http_vts_is(&group, "server")) {
        kind = ngx_http_vts_is(&zone, "*") ? NGX_HTTP_VTS_KIND_SUM
                                           : NGX_HTTP_VTS_KIND_SERVER;

    } else if (ngx_http_vts_is(&group, "upstream@alone")) {
        kind = NGX_HTTP_VTS_KIND_NOGROUPS;
        ngx_str_set(&g, NGX_HTTP_VTS_NOGROUPS_NAME);

        if (z.len && z.data[0] == '@') {
            z.data++;
            z.len--;
        }

    } else if (ngx_http_vts_is(&group, "filter")
               || ngx_http_vts_is(&group, "upstream@group"))
    {
        kind = (group.data[0] == 'f') ? NGX_HTTP_VTS_KIND_FILTER
                                      : NGX_HTTP_VTS_KIND_UPSTREAM;

        at = ngx_strlchr(zone.data, zone.data + zone.len, '@');
        if (at == NULL) {
            goto value;
        }

        g.data = zone.data;
        g.len = at - zone.data;
        z.data = at + 1;
        z.len = zone.data + zone.len - z.data;

    } else if (ngx_http_vts_is(&group, "cache")) {
        kind = NGX_HTTP_VTS_KIND_CACHE;
        g.len = 0;
        g.data = NULL;
        z = zone;

    } else {
        goto value;
    }

    buf = ngx_pnalloc(r->pool, g.len + z.len + 1);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    if (g.len) {
        ngx_memcpy(buf, g.data, g.len);
    }

    ngx_memcpy(buf + g.len, z.data, z.len);

    ngx_memzero(&e, sizeof(ngx_http_vts_entry_t));

    ctx = vmcf->shm_zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    vn = ngx_http_vts_node_find_locked(ctx, kind, buf, g.len + z.len, g.len);
    if (vn != NULL) {
        e.c = vn->counters;
        found = 1;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (ngx_http_vts_is(&name, "requestCounter")) {
        n = e.c.requests;

    } else if (ngx_http_vts_is(&name, "inBytes")) {
        n = e.c.in_bytes;

    } else if (ngx_http_vts_is(&name, "outBytes")) {
        n = e.c.out_bytes;

    } else if (ngx_http_vts_is(&name, "requestMsecCounter")) {
        n = e.c.request_msec;

    } else if (ngx_http_vts_is(&name, "requestMsec")) {
        n = ngx_http_vts_request_average(r, &e.c.request_window);

    } else if (ngx_http_vts_is(&name, "responseMsecCounter")) {
        n = e.c.response_msec;

    } else if (ngx_http_vts_is(&name, "responseMsec")) {
        n = ngx_http_vts_request_average(r, &e.c.response_window);

    } else if (name.len == 3 && name.data[0] >= '1' && name.data[0] <= '5'
               && name.data[1] == 'x' && name.data[2] == 'x')
    {
        n = e.c.responses[name.data[0] - '1'];

    } else if (ngx_http_vts_is(&name, "cacheMaxSize")) {
        n = e.c.cache_max_size;

    } else if (ngx_http_vts_is(&name, "cacheUsedSize")) {
        n = e.c.cache_used_size;

    } else if (name.len > 5 && ngx_strncmp(name.data, "cache", 5) == 0) {
        n = ngx_http_vts_cache_counter(&e.c, name.data + 5, name.len - 5);

    } else if (kind == NGX_HTTP_VTS_KIND_UPSTREAM) {
        e.kind = kind;
        e.group = g;
        e.name = z;
        us = ngx_http_vts_find_server_conf(r, &e);

        if (us != NULL) {
            found = 1;

            if (ngx_http_vts_is(&name, "weight")) {
                n = us->weight;

            } else if (ngx_http_vts_is(&name, "maxFails")) {
                n = us->max_fails;

            } else if (ngx_http_vts_is(&name, "failTimeout")) {
                n = us->fail_timeout;

            } else if (ngx_http_vts_is(&name, "backup")) {
                n = us->backup;

            } else if (ngx_http_vts_is(&name, "down")) {
                n = ngx_http_vts_peer_is_down(r, &e, us);
            }
        }
    }

#undef ngx_http_vts_is

    (void) found;

value:

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


char *
ngx_http_vts_set_by_filter(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = conf;

    ngx_str_t                         *value, name;
    ngx_http_vts_set_t                *set;
    ngx_http_variable_t               *var;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (value[1].len < 2 || value[1].data[0] != '$') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid variable name \"%V\" in \"%V\"; it "
                           "starts with $", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data + 1;
    name.len = value[1].len - 1;

    var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_CHANGEABLE
                                           |NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_CONF_ERROR;
    }

    if (vlcf->sets == NGX_CONF_UNSET_PTR) {
        vlcf->sets = ngx_array_create(cf->pool, 2,
                                      sizeof(ngx_http_vts_set_t));
        if (vlcf->sets == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    set = ngx_array_push(vlcf->sets);
    if (set == NULL) {
        return NGX_CONF_ERROR;
    }

    set->index = ngx_http_get_variable_index(cf, &name);
    if (set->index == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    var->get_handler = ngx_http_vts_set_variable;
    var->data = (uintptr_t) set->index;

    if (ngx_strlchr(value[2].data, value[2].data + value[2].len, '/') == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"%V\" in \"%V\"; expected "
                           "group/zone/name such as "
                           "server/example.org/requestCounter",
                           &value[2], &cmd->name);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = &set->spec;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}
