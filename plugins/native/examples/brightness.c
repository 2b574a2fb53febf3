/*
 * Example native reward plugin in C: the fraction of pixels brighter than a threshold
 * (config: {"threshold": 0..255}, default 128), averaged over channels.
 * Built by set-up: cc -shared -fPIC -O2 -Iplugins/native/include brightness.c
 * Test builds define HRF_TEST_ABI to pretend another ABI version.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hrf_reward.h"

#ifndef HRF_TEST_ABI
#define HRF_TEST_ABI HRF_REWARD_ABI_VERSION
#endif

typedef struct {
    int threshold;
    char error[256];
} state_t;

static char create_error[256];

static void *create(const char *config_json) {
    int threshold = 128;
    const char *key = strstr(config_json, "\"threshold\"");
    if (key) {
        const char *colon = strchr(key, ':');
        char *end = NULL;
        long v = colon ? strtol(colon + 1, &end, 10) : -1;
        if (!colon || end == colon + 1 || v < 0 || v > 255) {
            snprintf(create_error, sizeof create_error, "threshold: an integer in 0..=255 expected");
            return NULL;
        }
        threshold = (int)v;
    }
    state_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(create_error, sizeof create_error, "out of memory");
        return NULL;
    }
    s->threshold = threshold;
    return s;
}

static int32_t score(void *state, const hrf_sample *samples, size_t n, float *scores) {
    state_t *s = state;
    for (size_t i = 0; i < n; i++) {
        const hrf_sample *x = &samples[i];
        size_t len = (size_t)x->width * x->height * x->channels;
        if (x->channels != 1 && x->channels != 3) {
            snprintf(s->error, sizeof s->error, "sample %zu: %u channels", i, x->channels);
            return 1;
        }
        size_t bright = 0;
        for (size_t j = 0; j < len; j++) bright += x->data[j] > s->threshold;
        scores[i] = len ? (float)bright / (float)len : 0.0f;
    }
    return 0;
}

static const char *last_error(void *state) {
    return state ? ((state_t *)state)->error : create_error;
}

static void destroy(void *state) { free(state); }

static const hrf_reward_plugin PLUGIN = {
    .abi_version = HRF_TEST_ABI,
    .table_size = sizeof(hrf_reward_plugin),
    .sample_size = sizeof(hrf_sample),
    .name = "brightness-c",
    .version = "1.0.0",
    .higher_is_better = 1,
    .batch_hint = 0,
    .create = create,
    .score = score,
    .last_error = last_error,
    .destroy = destroy,
};

uint32_t hrf_reward_abi_version(void) { return HRF_TEST_ABI; }
const hrf_reward_plugin *hrf_reward_plugin_table(void) { return &PLUGIN; }
