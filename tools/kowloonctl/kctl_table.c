/*
 * kctl_table: aligned plain-text tables for humans.
 */
#include "kctl.h"

#include "kl_alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kctl_table {
    size_t n_cols; /* columns */
    char **cells;  /* headers, then rows, row-major; owned */
    size_t n_rows; /* rows including the header row */
    size_t cap;    /* rows allocated */
};

kctl_table_t *
kctl_table_new(const char *const *headers, size_t n_cols)
{
    kctl_table_t *self = kl_calloc(1, sizeof *self);
    self->n_cols = n_cols;
    kctl_table_row(self, headers);
    return self;
}

void
kctl_table_row(kctl_table_t *self, const char *const *cells)
{
    if (self->n_rows == self->cap) {
        self->cap = self->cap ? self->cap * 2 : 16;
        self->cells =
            kl_realloc(self->cells, self->cap * self->n_cols * sizeof(char *));
    }
    for (size_t c = 0; c < self->n_cols; c++)
        self->cells[self->n_rows * self->n_cols + c] =
            kl_strdup(cells[c] ? cells[c] : "");
    self->n_rows++;
}

void
kctl_table_print(const kctl_table_t *self)
{
    size_t *w = kl_calloc(self->n_cols, sizeof *w);
    for (size_t r = 0; r < self->n_rows; r++)
        for (size_t c = 0; c < self->n_cols; c++) {
            size_t len = strlen(self->cells[r * self->n_cols + c]);
            if (len > w[c])
                w[c] = len;
        }
    for (size_t r = 0; r < self->n_rows; r++) {
        for (size_t c = 0; c < self->n_cols; c++) {
            const char *cell = self->cells[r * self->n_cols + c];
            if (c + 1 == self->n_cols)
                printf("%s", cell);
            else
                printf("%-*s  ", (int)w[c], cell);
        }
        putchar('\n');
    }
    free(w);
}

void
kctl_table_destroy(kctl_table_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kctl_table_t *self = *self_p;
    for (size_t i = 0; i < self->n_rows * self->n_cols; i++)
        free(self->cells[i]);
    free(self->cells);
    free(self);
    *self_p = NULL;
}
