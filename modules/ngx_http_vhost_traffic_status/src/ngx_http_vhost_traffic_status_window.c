
/*
 * The moving window of a zone entry's last request (or upstream response)
 * times, and the averages over it that vhost_traffic_status_average_method
 * selects: the arithmetic mean (AMM) or the weighted moving average (WMA,
 * the newest sample weighing most), of the samples younger than the
 * period, or of every sample held when the period is 0.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_vhost_traffic_status_module.h"


uint64_t
ngx_http_vts_now_msec(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


void
ngx_http_vts_window_add(ngx_http_vts_window_t *w, uint64_t now,
    ngx_msec_t msec)
{
    msec = ngx_min(msec, (ngx_msec_t) NGX_HTTP_VTS_WINDOW_MAX_MSEC);

    w->sec[w->next] = (uint32_t) (now / 1000);
    w->packed[w->next] = (uint32_t) (msec << 10 | now % 1000);
    w->next = (w->next + 1) % NGX_HTTP_VTS_WINDOW_LEN;

    if (w->count < NGX_HTTP_VTS_WINDOW_LEN) {
        w->count++;
    }
}


/* when the sample in slot k was taken, epoch ms */

uint64_t
ngx_http_vts_window_time(ngx_http_vts_window_t *w, ngx_uint_t k)
{
    return (uint64_t) w->sec[k] * 1000 + (w->packed[k] & 0x3ff);
}


/* the time the sample in slot k measured, ms */

ngx_msec_t
ngx_http_vts_window_msec(ngx_http_vts_window_t *w, ngx_uint_t k)
{
    return w->packed[k] >> 10;
}


/* the slot of the i-th sample held, oldest first */

ngx_uint_t
ngx_http_vts_window_slot(ngx_http_vts_window_t *w, ngx_uint_t i)
{
    return (w->next + NGX_HTTP_VTS_WINDOW_LEN - w->count + i)
           % NGX_HTTP_VTS_WINDOW_LEN;
}


uint64_t
ngx_http_vts_window_average(ngx_http_vts_window_t *w, ngx_uint_t method,
    ngx_msec_t period, uint64_t now)
{
    uint64_t    sum, weights, weight;
    ngx_uint_t  i, k;

    sum = 0;
    weights = 0;
    weight = 0;

    /* a slot out of range means a corrupt entry: no average rather than UB */
    if (w->count > NGX_HTTP_VTS_WINDOW_LEN
        || w->next >= NGX_HTTP_VTS_WINDOW_LEN)
    {
        return 0;
    }

    for (i = 0; i < w->count; i++) {
        k = ngx_http_vts_window_slot(w, i);

        if (period != 0 && ngx_http_vts_window_time(w, k) + period <= now) {
            continue;
        }

        weight = (method == NGX_HTTP_VTS_AVERAGE_WMA) ? weight + 1 : 1;
        sum += (uint64_t) ngx_http_vts_window_msec(w, k) * weight;
        weights += weight;
    }

    return weights ? sum / weights : 0;
}
