
/*
 * Virtual-host traffic status: vhost_traffic_status_limit_traffic and
 * vhost_traffic_status_limit_traffic_by_set_key.  In the preaccess phase a
 * request is refused with the limit's status code (503 by default) once
 * the counter of the member ("request", "in", "out", "1xx" .. "5xx",
 * "cache_miss" .. "cache_scarce") in the zone is above the size.  The zone
 * is the request's server zone, or for by_set_key one named "NO@server",
 * "FG@group@key", "UG@upstream@peer", "UA@peer" or "CC@cache_zone".
 */


#include "ngx_http_vhost_traffic_status_module.h"


#define NGX_HTTP_VTS_MEMBER_REQUEST  0
#define NGX_HTTP_VTS_MEMBER_IN       1
#define NGX_HTTP_VTS_MEMBER_OUT      2
#define NGX_HTTP_VTS_MEMBER_1XX      3     /* .. 5xx: 3 .. 7 */
#define NGX_HTTP_VTS_MEMBER_CACHE    8     /* miss .. scarce: 8 .. 15 */


static ngx_int_t
ngx_http_vts_member(ngx_str_t *s)
{
    ngx_uint_t  i;

    static ngx_str_t  names[] = {
        ngx_string("request"), ngx_string("in"), ngx_string("out"),
        ngx_string("1xx"), ngx_string("2xx"), ngx_string("3xx"),
        ngx_string("4xx"), ngx_string("5xx"),
        ngx_string("cache_miss"), ngx_string("cache_bypass"),
        ngx_string("cache_expired"), ngx_string("cache_stale"),
        ngx_string("cache_updating"), ngx_string("cache_revalidated"),
        ngx_string("cache_hit"), ngx_string("cache_scarce")
    };

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (s->len == names[i].len
            && ngx_strncasecmp(s->data, names[i].data, s->len) == 0)
        {
            return i;
        }
    }

    return NGX_ERROR;
}


/* "member:size" into the member and the size; NGX_ERROR when malformed */

static ngx_int_t
ngx_http_vts_member_size(ngx_str_t *v, ngx_int_t *member, off_t *size)
{
    u_char     *colon;
    ngx_str_t   m, s;

    colon = ngx_strlchr(v->data, v->data + v->len, ':');
    if (colon == NULL) {
        return NGX_ERROR;
    }

    m.data = v->data;
    m.len = colon - v->data;
    s.data = colon + 1;
    s.len = v->data + v->len - s.data;

    *member = ngx_http_vts_member(&m);
    if (*member == NGX_ERROR || s.len == 0) {
        return NGX_ERROR;
    }

    *size = ngx_parse_offset(&s);
    if (*size == NGX_ERROR) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static uint64_t
ngx_http_vts_member_value(ngx_http_vts_counters_t *c, ngx_int_t member)
{
    switch (member) {

    case NGX_HTTP_VTS_MEMBER_REQUEST:
        return c->requests;

    case NGX_HTTP_VTS_MEMBER_IN:
        return c->in_bytes;

    case NGX_HTTP_VTS_MEMBER_OUT:
        return c->out_bytes;

    default:
        return (member >= NGX_HTTP_VTS_MEMBER_CACHE)
               ? c->cache[member - NGX_HTTP_VTS_MEMBER_CACHE]
               : c->responses[member - NGX_HTTP_VTS_MEMBER_1XX];
    }
}


/* the node a by_set_key key names: kind, group and name */

static ngx_int_t
ngx_http_vts_limit_key(ngx_str_t *key, ngx_uint_t *kind, ngx_str_t *group,
    ngx_str_t *name)
{
    u_char     *p, *last, *at;
    ngx_str_t   rest;

    if (key->len < 3 || key->data[2] != '@') {
        return NGX_ERROR;
    }

    p = key->data + 3;
    last = key->data + key->len;
    rest.data = p;
    rest.len = last - p;

    group->len = 0;
    group->data = p;
    *name = rest;

    if (ngx_strncmp(key->data, "NO", 2) == 0) {
        *kind = NGX_HTTP_VTS_KIND_SERVER;
        return NGX_OK;
    }

    if (ngx_strncmp(key->data, "UA", 2) == 0) {
        *kind = NGX_HTTP_VTS_KIND_NOGROUPS;
        ngx_str_set(group, NGX_HTTP_VTS_NOGROUPS_NAME);
        return NGX_OK;
    }

    if (ngx_strncmp(key->data, "CC", 2) == 0) {
        *kind = NGX_HTTP_VTS_KIND_CACHE;
        return NGX_OK;
    }

    if (ngx_strncmp(key->data, "FG", 2) == 0) {
        *kind = NGX_HTTP_VTS_KIND_FILTER;

    } else if (ngx_strncmp(key->data, "UG", 2) == 0) {
        *kind = NGX_HTTP_VTS_KIND_UPSTREAM;

    } else {
        return NGX_ERROR;
    }

    /* the group may contain '@' itself: the name follows the last one */

    at = NULL;

    for (p = rest.data; p < last; p++) {
        if (*p == '@') {
            at = p;
        }
    }

    if (at == NULL) {
        return NGX_ERROR;
    }

    group->len = at - rest.data;
    name->data = at + 1;
    name->len = last - name->data;

    return NGX_OK;
}


ngx_int_t
ngx_http_vts_limit_handler(ngx_http_request_t *r)
{
    off_t                      size;
    u_char                    *buf;
    uint64_t                   value;
    ngx_int_t                  member, rc;
    ngx_str_t                  key, group, name, ms;
    ngx_uint_t                 i, kind, found;
    ngx_http_vts_ctx_t        *ctx;
    ngx_http_vts_node_t       *vn;
    ngx_http_vts_limit_t      *l;
    ngx_http_vts_loc_conf_t   *vlcf;
    ngx_http_vts_main_conf_t  *vmcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    vlcf = ngx_http_get_module_loc_conf(r, ngx_http_vhost_traffic_status_module);

    if (!vlcf->enable || !vlcf->limit || vlcf->bypass_limit
        || vlcf->limits == NULL || vlcf->limits->nelts == 0)
    {
        return NGX_DECLINED;
    }

    vmcf = ngx_http_get_module_main_conf(r,
                                         ngx_http_vhost_traffic_status_module);
    ctx = vmcf->shm_zone->data;

    if (ctx == NULL || ctx->sh == NULL) {
        return NGX_DECLINED;
    }

    l = vlcf->limits->elts;

    for (i = 0; i < vlcf->limits->nelts; i++) {

        if (ngx_http_complex_value(r, &l[i].member, &ms) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_http_vts_member_size(&ms, &member, &size) != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "vhost_traffic_status: invalid limit \"%V\", "
                          "expected member:size such as request:1000 or "
                          "out:10g", &ms);
            continue;
        }

        if (l[i].has_key) {
            if (ngx_http_complex_value(r, &l[i].key, &key) != NGX_OK) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            rc = ngx_http_vts_limit_key(&key, &kind, &group, &name);

            if (rc == NGX_DECLINED) {
                continue;
            }

            if (rc != NGX_OK) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "vhost_traffic_status: invalid limit key "
                              "\"%V\", expected NO@server, FG@group@key, "
                              "UG@upstream@peer, UA@peer or CC@cache_zone",
                              &key);
                continue;
            }

        } else {
            kind = NGX_HTTP_VTS_KIND_SERVER;
            ngx_str_null(&group);
            ngx_http_vts_server_key(r, &name);
        }

        if (group.len + name.len > 2 * NGX_HTTP_VTS_MAX_KEY_LEN) {
            continue;
        }

        buf = ngx_pnalloc(r->pool, group.len + name.len + 1);
        if (buf == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (group.len) {
            ngx_memcpy(buf, group.data, group.len);
        }

        ngx_memcpy(buf + group.len, name.data, name.len);

        value = 0;
        found = 0;

        ngx_shmtx_lock(&ctx->shpool->mutex);

        vn = ngx_http_vts_node_find_locked(ctx, kind, buf,
                                           group.len + name.len, group.len);
        if (vn != NULL) {
            value = ngx_http_vts_member_value(&vn->counters, member);
            found = 1;
        }

        ngx_shmtx_unlock(&ctx->shpool->mutex);

        if (found && value > (uint64_t) size) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "vhost_traffic_status: limit \"%V\" exceeded "
                          "(%uL), returning %ui", &ms, value, l[i].code);
            return l[i].code;
        }
    }

    return NGX_DECLINED;
}


/*
 * vhost_traffic_status_limit_traffic member:size [code]
 * vhost_traffic_status_limit_traffic_by_set_key key member:size [code]
 */

char *
ngx_http_vts_limit_traffic(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = conf;

    off_t                              size;
    ngx_int_t                          code, member;
    ngx_str_t                         *value, *ms;
    ngx_uint_t                         by_key, n;
    ngx_http_vts_limit_t              *l;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;
    by_key = (cmd->name.len > sizeof("vhost_traffic_status_limit_traffic") - 1);
    n = by_key ? 2 : 1;

    if (cf->args->nelts > n + 2) {
        return "has too many arguments";
    }

    if (cf->args->nelts < n + 1) {
        return "has too few arguments";
    }

    if (vlcf->limits == NGX_CONF_UNSET_PTR) {
        vlcf->limits = ngx_array_create(cf->pool, 2,
                                        sizeof(ngx_http_vts_limit_t));
        if (vlcf->limits == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    l = ngx_array_push(vlcf->limits);
    if (l == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(l, sizeof(ngx_http_vts_limit_t));
    l->code = NGX_HTTP_SERVICE_UNAVAILABLE;

    ms = &value[n];

    /* a fixed "member:size" is checked now; one with variables per request */

    if (ngx_http_script_variables_count(ms) == 0
        && ngx_http_vts_member_size(ms, &member, &size) != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid limit \"%V\", expected member:size with "
                           "member request, in, out, 1xx .. 5xx or "
                           "cache_miss .. cache_scarce "
                           "and a size such as 1000, 64k or 10g", ms);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
    ccv.cf = cf;
    ccv.value = ms;
    ccv.complex_value = &l->member;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (by_key) {
        l->has_key = 1;

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = &value[1];
        ccv.complex_value = &l->key;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (cf->args->nelts == n + 2) {
        code = ngx_atoi(value[n + 1].data, value[n + 1].len);

        if (code < 100 || code > 599) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid status code \"%V\", expected "
                               "100 .. 599", &value[n + 1]);
            return NGX_CONF_ERROR;
        }

        l->code = code;
    }

    return NGX_CONF_OK;
}


/* the member part of "member:size" (all of it with variables only) */

static void
ngx_http_vts_limit_member_text(ngx_http_vts_limit_t *l, ngx_str_t *m)
{
    u_char  *colon;

    *m = l->member.value;

    colon = ngx_strlchr(m->data, m->data + m->len, ':');
    if (colon != NULL) {
        m->len = colon - m->data;
    }
}


/* drops later limits of the same member (and key), as vts does */

ngx_array_t *
ngx_http_vts_limits_unique(ngx_conf_t *cf, ngx_array_t *limits)
{
    ngx_str_t              a, b;
    ngx_uint_t             i, j;
    ngx_array_t           *u;
    ngx_http_vts_limit_t  *l, *t, *p;

    u = ngx_array_create(cf->pool, limits->nelts ? limits->nelts : 1,
                         sizeof(ngx_http_vts_limit_t));
    if (u == NULL) {
        return NULL;
    }

    l = limits->elts;

    for (i = 0; i < limits->nelts; i++) {
        t = u->elts;
        ngx_http_vts_limit_member_text(&l[i], &a);

        for (j = 0; j < u->nelts; j++) {
            ngx_http_vts_limit_member_text(&t[j], &b);

            if (t[j].has_key == l[i].has_key
                && a.len == b.len
                && ngx_strncmp(a.data, b.data, a.len) == 0
                && t[j].key.value.len == l[i].key.value.len
                && (l[i].key.value.len == 0
                    || ngx_strncmp(t[j].key.value.data, l[i].key.value.data,
                                   l[i].key.value.len) == 0))
            {
                break;
            }
        }

        if (j < u->nelts) {
            continue;
        }

        p = ngx_array_push(u);
        if (p == NULL) {
            return NULL;
        }

        *p = l[i];
    }

    return u;
}
