/* The training crop in one call: decode only the JPEG window of a crop
 * box, then resize the box with Pillow's arithmetic.
 *
 * Why: RandomResizedCrop keeps 20-100 % of a photo's area, and on a 2-core
 * machine the full decode and Pillow's resize were most of an image's time
 * (docs/data.md has the measurements).
 *
 * The operation is the reference's (torchvision's F.resized_crop on a PIL
 * image, timm's RandomResizedCropAndInterpolation alike): `img.crop(box)`
 * then `.resize(size, BICUBIC)`. The filter sees only the box's pixels: its
 * taps are clamped at the box's edges, not read from the image around it
 * (Pillow's `resize(box=...)` reads around it, and differs at the border by
 * tens of levels on photos). Eval resizes the whole image: its box is the
 * image.
 *
 * Decoding (libjpeg-turbo, the settings of mae_jax's full decode and of
 * Pillow's: accurate integer IDCT, smooth chroma upsampling):
 * jpeg_crop_scanline() limits the columns that are reconstructed (to whole
 * iMCU columns around the request), jpeg_skip_scanlines() passes the rows
 * above the window without reconstructing them, and the rows below it are
 * never read. The entropy-coded data above and left of the window is still
 * Huffman-decoded: a JPEG has no index to seek into. A window edge that is
 * not an image edge can differ from the full decode by a pixel or two (the
 * upsampler has no neighbour there), so the window is the box plus
 * WINDOW_MARGIN pixels on each side (where the image has them).
 *
 * Resizing reproduces Pillow's 8-bit bicubic resample exactly: the same
 * double precision filter weights per output pixel, rounded to the same
 * 22-bit fixed point, a horizontal pass rounded to uint8, then a vertical
 * pass. The weights are computed in the box's own coordinates, as Pillow
 * computes them for the cropped image, so they are the reference's to the
 * last bit. The integer passes are reordered to run over contiguous memory
 * (the window is transposed for the horizontal pass), which integer sums
 * allow without changing a bit; they are compiled for AVX2 and AVX-512
 * where the CPU has them (target_clones), plain otherwise.
 *
 * Strict, as the full decode: any libjpeg warning (corrupt data, the data
 * ending inside the window) is an error.
 *
 * Built by `python -m mae_jax.build_native` (setup.sh runs it);
 * crop_resize.py loads it with ctypes and falls back to simplejpeg + Pillow
 * when it is missing.
 */
#include <math.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

/* Pillow's fixed point for 8-bit resampling: 32 bits less 8 for the pixel
 * and 2 for the filter's overshoot. */
#define PRECISION_BITS 22
/* Extra decoded pixels on each side of what the resize reads. */
#define WINDOW_MARGIN 3
/* Rows asked of libjpeg per jpeg_read_scanlines call. */
#define READ_ROWS 16
/* Bicubic (a = -0.5) reaches 2 pixels at unit scale. */
#define BICUBIC_SUPPORT 2.0

/* x86-64-v4 (AVX-512 F/BW/DQ/VL) lets GCC use 512-bit byte and word
 * instructions, which "avx512f" alone does not: 5 % less time per crop than
 * the "avx512f" clones on the AVX-512 machine (docs/data.md). GCC names the
 * level from version 11; others get the older name.
 *
 * MAE_CLONES_AVX2 or MAE_CLONES_PLAIN (crop_resize.build(clones=...)) keep
 * only the lower clones, so that the tests check the pixels of every clone
 * on an AVX-512 CPU and the benchmark can time the AVX2 code there.
 * AVX512_PICKED and AVX2_PICKED are the conditions the loader's resolver
 * tests, for mae_crop_resize_vector_bits(). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones) && !defined(MAE_CLONES_PLAIN)
#if defined(MAE_CLONES_AVX2)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#elif !defined(__clang__) && __GNUC__ >= 11
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#define AVX512_PICKED __builtin_cpu_supports("x86-64-v4")
#else
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define AVX512_PICKED __builtin_cpu_supports("avx512f")
#endif
#define AVX2_PICKED __builtin_cpu_supports("avx2")
#endif
#endif
#ifndef VECTOR_CLONES
#define VECTOR_CLONES
#endif

/* ------------------------------------------------------------ weights --- */

static double bicubic(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return (1.5 * x - 2.5) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * -0.5;
  return 0.0;
}

/* The resample of one axis, for outputs [first, first + count) of a resize
 * of the box [origin, origin + length) of the axis to out_size pixels. */
typedef struct {
  int taps;        /* weights per output */
  int *start;      /* first input pixel of each output (image coordinates) */
  int *length;     /* inputs each output reads */
  int32_t *weight; /* taps per output, fixed point */
} Axis;

static void axis_free(Axis *axis) {
  free(axis->start);
  free(axis->length);
  free(axis->weight);
  axis->start = axis->length = NULL;
  axis->weight = NULL;
}

/* The expressions and their order follow Pillow's for a resize of the
 * whole (cropped) image, whose edges are 0 and `length` (double
 * precision): any change here changes pixels. The taps are clamped to the
 * box, then moved to image coordinates. Returns 0 when out of memory. */
static int axis_init(Axis *axis, int origin, int length, int out_size, int first, int count) {
  double in0 = 0.0, in1 = (double)length;
  double scale = (in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = BICUBIC_SUPPORT * filterscale;
  double inverse = 1.0 / filterscale;
  int taps = (int)ceil(support) * 2 + 1;
  double *raw = malloc((size_t)taps * sizeof(double));
  axis->taps = taps;
  axis->start = malloc((size_t)count * sizeof(int));
  axis->length = malloc((size_t)count * sizeof(int));
  axis->weight = calloc((size_t)count * (size_t)taps, sizeof(int32_t));
  if (!raw || !axis->start || !axis->length || !axis->weight) {
    free(raw);
    axis_free(axis);
    return 0;
  }
  for (int i = 0; i < count; i++) {
    double center = in0 + (first + i + 0.5) * scale;
    double total = 0.0;
    int low = (int)(center - support + 0.5);
    int high = (int)(center + support + 0.5);
    if (low < 0) low = 0;
    if (high > length) high = length;
    int reads = high - low;
    for (int x = 0; x < reads; x++) {
      raw[x] = bicubic((x + low - center + 0.5) * inverse);
      total += raw[x];
    }
    int32_t *weight = axis->weight + (size_t)i * taps;
    for (int x = 0; x < reads; x++) {
      double w = total != 0.0 ? raw[x] / total : raw[x];
      weight[x] = w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS))
                        : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
    }
    axis->start[i] = origin + low;
    axis->length[i] = reads;
  }
  free(raw);
  return 1;
}

/* The inputs [*first, *end) that `count` outputs of the axis read. */
static void axis_span(const Axis *axis, int count, int *first, int *end) {
  *first = axis->start[0];
  *end = axis->start[0] + axis->length[0];
  for (int i = 1; i < count; i++) {
    if (axis->start[i] < *first) *first = axis->start[i];
    if (axis->start[i] + axis->length[i] > *end) *end = axis->start[i] + axis->length[i];
  }
}

/* ------------------------------------------------------------- passes --- */

static inline uint8_t clip8(int32_t sum) {
  int32_t value = sum >> PRECISION_BITS;
  return value < 0 ? 0 : value > 255 ? 255 : (uint8_t)value;
}

/* sum[j] = rounding + sum_t rows[t][j] * weight[t] for j < n: one output
 * line of a pass over `length` input lines `stride` bytes apart. Blocks of
 * BLOCK sums stay in registers over all the taps. */
#define BLOCK 32
VECTOR_CLONES
static void filter_lines(const uint8_t *restrict rows, size_t stride, int length,
                         const int32_t *restrict weight, int32_t *restrict sum, int n) {
  int j = 0;
  for (; j + BLOCK <= n; j += BLOCK) {
    int32_t block[BLOCK];
    for (int b = 0; b < BLOCK; b++) block[b] = 1 << (PRECISION_BITS - 1);
    for (int t = 0; t < length; t++) {
      const uint8_t *restrict row = rows + (size_t)t * stride + j;
      int32_t k = weight[t];
      for (int b = 0; b < BLOCK; b++) block[b] += row[b] * k;
    }
    for (int b = 0; b < BLOCK; b++) sum[j + b] = block[b];
  }
  for (; j < n; j++) {
    int32_t total = 1 << (PRECISION_BITS - 1);
    for (int t = 0; t < length; t++) total += rows[(size_t)t * stride + j] * weight[t];
    sum[j] = total;
  }
}

/* out[j] = clip8(sum[j]) for j < n. */
VECTOR_CLONES
static void store_line(const int32_t *restrict sum, uint8_t *restrict out, int n) {
  for (int j = 0; j < n; j++) out[j] = clip8(sum[j]);
}

/* The same for RGBX sums stored as RGB: n pixels. */
VECTOR_CLONES
static void store_line_rgb(const int32_t *restrict sum, uint8_t *restrict out, int n) {
  for (int x = 0; x < n; x++) {
    out[3 * x + 0] = clip8(sum[4 * x + 0]);
    out[3 * x + 1] = clip8(sum[4 * x + 1]);
    out[3 * x + 2] = clip8(sum[4 * x + 2]);
  }
}

/* Transposes: in is [rows][cols] elements with rows `in_stride` elements
 * apart; out is [cols][rows], packed. Pixels are one element: a byte
 * (grayscale) or a 32-bit word (RGB decoded as RGBX), so both are plain
 * element moves, in cache-sized blocks. */
#define TRANSPOSE(name, type)                                                            \
  VECTOR_CLONES static void name(const type *in, size_t in_stride, int rows, int cols,   \
                                 type *out) {                                            \
    const int block = 32;                                                                \
    for (int r0 = 0; r0 < rows; r0 += block) {                                           \
      int r1 = r0 + block < rows ? r0 + block : rows;                                    \
      for (int c0 = 0; c0 < cols; c0 += block) {                                         \
        int c1 = c0 + block < cols ? c0 + block : cols;                                  \
        for (int c = c0; c < c1; c++)                                                    \
          for (int r = r0; r < r1; r++) out[(size_t)c * rows + r] = in[(size_t)r * in_stride + c]; \
      }                                                                                  \
    }                                                                                    \
  }
TRANSPOSE(transpose8, uint8_t)
TRANSPOSE(transpose32, uint32_t)

/* [rows][cols] pixels of `pixel_bytes` (1 or 4) -> [cols][rows]. */
static void transpose(const uint8_t *in, size_t in_stride_bytes, int rows, int cols,
                      int pixel_bytes, uint8_t *out) {
  if (pixel_bytes == 1)
    transpose8(in, in_stride_bytes, rows, cols, out);
  else
    transpose32((const uint32_t *)in, in_stride_bytes / 4, rows, cols, (uint32_t *)out);
}

/* ------------------------------------------------------------- resize --- */

/* The part of the decoded window the resize reads: rows x cols pixels of
 * pixel_bytes (1: grey, 4: RGBX), lines `stride` bytes apart, whose first
 * row and column are the image's row0 and col0. */
typedef struct {
  const uint8_t *pixels;
  size_t stride;
  int rows, cols, row0, col0, pixel_bytes;
} Window;

/* What the resize writes: height x width pixels of `channels` bytes,
 * packed, mirrored left to right if flip. */
typedef struct {
  uint8_t *pixels;
  int height, width, channels, flip;
} Output;

static size_t larger(size_t a, size_t b) { return a > b ? a : b; }

/* Scratch bytes of a resize in either order: the int32 sums of one line,
 * then the intermediate images (each a multiple of 4 bytes for RGBX, so
 * every part stays word-aligned for the transposes). */
static size_t scratch_bytes(const Window *in, const Output *out, int vertical_first) {
  size_t pb = (size_t)in->pixel_bytes;
  if (!vertical_first) {
    size_t column = (size_t)in->rows * pb; /* a column of the window */
    size_t longest = larger(column, (size_t)out->width * pb);
    return longest * sizeof(int32_t) + (size_t)in->cols * column + 2 * (size_t)out->width * column;
  }
  size_t row = (size_t)in->cols * pb;           /* a row of the window */
  size_t column = (size_t)out->height * pb;     /* a column of the output */
  size_t longest = larger(row, column);
  return longest * sizeof(int32_t) + 2 * (size_t)out->height * row +
         2 * (size_t)out->width * column;
}

/* The horizontal pass over `lines` (one contiguous line of line_bytes per
 * input column, the first being the image's column col0): output column x
 * reads lines [start, start + length) and goes to line x of dest (mirrored:
 * out->width - 1 - x). */
static void horizontal_pass(const uint8_t *lines, size_t line_bytes, const Axis *cols, int col0,
                            const Output *out, int32_t *sum, uint8_t *dest) {
  for (int x = 0; x < out->width; x++) {
    filter_lines(lines + (size_t)(cols->start[x] - col0) * line_bytes, line_bytes,
                 cols->length[x], cols->weight + (size_t)x * cols->taps, sum, (int)line_bytes);
    int target = out->flip ? out->width - 1 - x : x;
    store_line(sum, dest + (size_t)target * line_bytes, (int)line_bytes);
  }
}

/* Pillow's order before 13 (and since, for most shapes): the horizontal
 * pass over the transposed window (its columns contiguous; output column x
 * reads window columns [start, start + length)), then the vertical pass,
 * rows contiguous again, RGBX packed to RGB at the end. */
static void horizontal_first(const Window *in, const Axis *rows, const Axis *cols,
                             const Output *out, uint8_t *scratch) {
  int pb = in->pixel_bytes;
  size_t column = (size_t)in->rows * pb;
  size_t out_line = (size_t)out->width * pb;
  int32_t *sum = (int32_t *)scratch;
  uint8_t *transposed = scratch + larger(column, out_line) * sizeof(int32_t);
  uint8_t *horizontal = transposed + (size_t)in->cols * column;
  uint8_t *unturned = horizontal + (size_t)out->width * column;
  transpose(in->pixels, in->stride, in->rows, in->cols, pb, transposed);
  horizontal_pass(transposed, column, cols, in->col0, out, sum, horizontal);
  transpose(horizontal, column, out->width, in->rows, pb, unturned);
  for (int y = 0; y < out->height; y++) {
    filter_lines(unturned + (size_t)(rows->start[y] - in->row0) * out_line, out_line,
                 rows->length[y], rows->weight + (size_t)y * rows->taps, sum, (int)out_line);
    uint8_t *target = out->pixels + (size_t)y * out->width * out->channels;
    if (pb == out->channels)
      store_line(sum, target, (int)out_line);
    else
      store_line_rgb(sum, target, out->width);
  }
}

/* Pillow 13's order when the height shrinks by more than twice what the
 * width shrinks: the vertical pass over the window's rows, then the
 * horizontal pass over the transposed result, transposed back. */
static void vertical_first(const Window *in, const Axis *rows, const Axis *cols,
                           const Output *out, uint8_t *scratch) {
  int pb = in->pixel_bytes;
  size_t row = (size_t)in->cols * pb;
  size_t column = (size_t)out->height * pb;
  int32_t *sum = (int32_t *)scratch;
  uint8_t *vertical = scratch + larger(row, column) * sizeof(int32_t);
  uint8_t *turned = vertical + (size_t)out->height * row;
  uint8_t *horizontal = turned + (size_t)out->height * row;
  uint8_t *unturned = horizontal + (size_t)out->width * column;
  for (int y = 0; y < out->height; y++) {
    filter_lines(in->pixels + (size_t)(rows->start[y] - in->row0) * in->stride, in->stride,
                 rows->length[y], rows->weight + (size_t)y * rows->taps, sum, (int)row);
    store_line(sum, vertical + (size_t)y * row, (int)row);
  }
  transpose(vertical, row, out->height, in->cols, pb, turned);
  horizontal_pass(turned, column, cols, in->col0, out, sum, horizontal);
  transpose(horizontal, column, out->width, out->height, pb, unturned);
  for (int y = 0; y < out->height; y++) {
    const uint8_t *line = unturned + (size_t)y * out->width * pb;
    uint8_t *target = out->pixels + (size_t)y * out->width * out->channels;
    if (pb == out->channels)
      memcpy(target, line, (size_t)out->width * pb);
    else
      for (int x = 0; x < out->width; x++) memcpy(target + 3 * x, line + 4 * x, 3);
  }
}

/* ------------------------------------------------------------ decoder --- */

struct strict_errors {
  struct jpeg_error_mgr base;
  jmp_buf escape;
  char message[JMSG_LENGTH_MAX];
};

static void fail(j_common_ptr info) {
  struct strict_errors *errors = (struct strict_errors *)info->err;
  (*info->err->format_message)(info, errors->message);
  longjmp(errors->escape, 1);
}

/* Level -1 is a warning (corrupt or truncated data): strict, so fail.
 * Levels >= 0 are trace messages. */
static void warn_or_trace(j_common_ptr info, int level) {
  if (level < 0) fail(info);
}

/* Bumped with every change of mae_crop_resize's arguments, of the pixels
 * it gives (4: crop, then resize) or of the functions crop_resize.py
 * calls: it refuses a library built from an older
 * source (a stale build would be called with the wrong arguments). */
int mae_crop_resize_abi(void) { return 4; }

/* The vector width of the resize code this CPU runs: 512 (AVX-512), 256
 * (AVX2) or 0 (plain C), for crop_resize.describe(). */
int mae_crop_resize_vector_bits(void) {
#ifdef AVX512_PICKED
  if (AVX512_PICKED) return 512;
#endif
#ifdef AVX2_PICKED
  if (AVX2_PICKED) return 256;
#endif
  return 0;
}

int mae_crop_resize_version(void) {
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
  return LIBJPEG_TURBO_VERSION_NUMBER;
#else
  return 0;
#endif
}

/* Decodes the JPEG in data[0:size] as `channels` (1: grayscale, 3: RGB),
 * crops its box (top, left, height, width) and resizes the crop to
 * resize_height x resize_width with Pillow's bicubic filter, and writes the part
 * [out_top, out_top + out_height) x [out_left, out_left + out_width) of the
 * result to out (uint8, row-major, packed): train crops take all of it,
 * eval takes the centre crop of a resized whole image. flip != 0 mirrors
 * the result left to right (for free: the horizontal pass writes its
 * columns in reverse order). vertical_first_order != 0 runs the vertical
 * pass first, as Pillow 13 does for some shapes (crop_resize.py decides,
 * by the Pillow that is installed).
 *
 * Returns 0 on success; 1 with a message (corrupt data, a colour space
 * libjpeg cannot give as RGB, a box outside the image, no memory), out then
 * undefined. */
int mae_crop_resize(const unsigned char *data, size_t size, int channels, int top, int left,
                    int height, int width, int resize_height, int resize_width, int out_top,
                    int out_left, int out_height, int out_width, int flip, int vertical_first_order,
                    unsigned char *out, char *message, size_t message_size) {
  struct jpeg_decompress_struct info;
  struct strict_errors errors;
  /* Set before libjpeg can jump back here, read after: volatile. */
  Axis *volatile axes = NULL;
  uint8_t *volatile arena = NULL;
  volatile int status = 1; /* 0 once out holds the result */

  info.err = jpeg_std_error(&errors.base);
  errors.base.error_exit = fail;
  errors.base.emit_message = warn_or_trace;
  errors.message[0] = '\0';
  if (setjmp(errors.escape)) {
    snprintf(message, message_size, "%s", errors.message);
    goto finish;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, data, (unsigned long)size);
  jpeg_read_header(&info, TRUE);
  int image_height = (int)info.image_height, image_width = (int)info.image_width;
  if (channels != 1 && channels != 3) {
    snprintf(message, message_size, "channels=%d: expected 1 or 3", channels);
    goto finish;
  }
  if (top < 0 || left < 0 || height <= 0 || width <= 0 || top + height > image_height ||
      left + width > image_width || resize_height <= 0 || resize_width <= 0 || out_top < 0 ||
      out_left < 0 || out_height <= 0 || out_width <= 0 ||
      out_top + out_height > resize_height || out_left + out_width > resize_width) {
    snprintf(message, message_size,
             "box (%d, %d, %d, %d) to %dx%d, part (%d, %d, %d, %d): not inside the %dx%d image",
             top, left, height, width, resize_height, resize_width, out_top, out_left, out_height,
             out_width, image_height, image_width);
    goto finish;
  }

  /* Weights first: they say which rows and columns the resize reads. */
  axes = calloc(2, sizeof(Axis));
  if (!axes) goto no_memory;
  Axis *rows = &axes[0], *cols = &axes[1];
  if (!axis_init(rows, top, height, resize_height, out_top, out_height) ||
      !axis_init(cols, left, width, resize_width, out_left, out_width))
    goto no_memory;
  int row0, row1, col0, col1;
  axis_span(rows, out_height, &row0, &row1);
  axis_span(cols, out_width, &col0, &col1);
  int decode_top = row0 - WINDOW_MARGIN < 0 ? 0 : row0 - WINDOW_MARGIN;
  int decode_bottom = row1 + WINDOW_MARGIN > image_height ? image_height : row1 + WINDOW_MARGIN;
  JDIMENSION decode_left = (JDIMENSION)(col0 - WINDOW_MARGIN < 0 ? 0 : col0 - WINDOW_MARGIN);
  int decode_right = col1 + WINDOW_MARGIN > image_width ? image_width : col1 + WINDOW_MARGIN;
  JDIMENSION decode_width = (JDIMENSION)decode_right - decode_left;

  /* RGB is decoded as RGBX (the same values, a spare byte per pixel): a
   * pixel is then one 32-bit word, which the transposes move at once. */
  int pixel_bytes = channels == 1 ? 1 : 4;
  info.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_EXT_RGBX;
  info.dct_method = JDCT_ISLOW;
  info.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&info);
  if (info.output_components != pixel_bytes) {
    snprintf(message, message_size, "the decoder gave %d bytes per pixel, not %d",
             info.output_components, pixel_bytes);
    goto finish;
  }
  /* Widens the window to whole iMCU columns. */
  jpeg_crop_scanline(&info, &decode_left, &decode_width);

  int window_rows = decode_bottom - decode_top;
  size_t window_stride = (size_t)decode_width * pixel_bytes;
  Output output = {out, out_height, out_width, channels, flip};
  Window used = {NULL, window_stride, row1 - row0, col1 - col0, row0, col0, pixel_bytes};
  size_t scratch = scratch_bytes(&used, &output, vertical_first_order);
  /* The scratch first, at malloc's alignment (its int32 sums lead). */
  arena = malloc(scratch + (size_t)window_rows * window_stride);
  if (!arena) goto no_memory;
  uint8_t *window = arena + scratch;
  used.pixels = window + (size_t)(row0 - decode_top) * window_stride +
                (size_t)(col0 - (int)decode_left) * pixel_bytes;

  if (decode_top > 0 &&
      jpeg_skip_scanlines(&info, (JDIMENSION)decode_top) != (JDIMENSION)decode_top) {
    snprintf(message, message_size, "could not skip %d rows", decode_top);
    goto finish;
  }
  /* Several rows a call: the upsampler makes two at a time (4:2:0), and a
   * one-row request costs it a copy through a spare row. */
  for (int row = 0; row < window_rows;) {
    JSAMPROW line[READ_ROWS];
    int want = window_rows - row < READ_ROWS ? window_rows - row : READ_ROWS;
    for (int k = 0; k < want; k++) line[k] = window + (size_t)(row + k) * window_stride;
    JDIMENSION got = jpeg_read_scanlines(&info, line, (JDIMENSION)want);
    if (got == 0) {
      snprintf(message, message_size, "the data ends after row %d", decode_top + row);
      goto finish;
    }
    row += (int)got;
  }
  /* The rows below the window are not needed: stop without reading them. */
  jpeg_abort_decompress(&info);

  if (vertical_first_order)
    vertical_first(&used, rows, cols, &output, arena);
  else
    horizontal_first(&used, rows, cols, &output, arena);
  status = 0;
  goto finish;

no_memory:
  snprintf(message, message_size, "out of memory");
finish: /* success or failure: status says which */
  jpeg_destroy_decompress(&info);
  if (axes) {
    axis_free(&axes[0]);
    axis_free(&axes[1]);
    free(axes);
  }
  free(arena);
  return status;
}
