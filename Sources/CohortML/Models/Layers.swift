// The arithmetic of each layer kind on raw buffers. Every kernel works on a whole batch laid out
// batch-major (example after example); parameters and their gradients are addressed by offset
// into the flat weight and gradient vectors. No kernel allocates: scratch space comes from the
// caller's `Workspace`, which is sized once per training call.

/// A layer resolved against its input shape and its offsets in the flat parameter vector.
enum LayerKernel: Sendable, Hashable {
  case dense(DenseKernel)
  case relu(ReLUKernel)
  case conv(ConvKernel)
  case maxPool(MaxPoolKernel)

  var inputCount: Int {
    switch self {
    case .dense(let k): k.inputs
    case .relu(let k): k.count
    case .conv(let k): k.channels * k.height * k.width
    case .maxPool(let k): k.channels * k.height * k.width
    }
  }

  var outputCount: Int {
    switch self {
    case .dense(let k): k.outputs
    case .relu(let k): k.count
    case .conv(let k): k.filters * k.outPixels
    case .maxPool(let k): k.channels * k.outHeight * k.outWidth
    }
  }

  var hasParameters: Bool {
    switch self {
    case .dense, .conv: true
    case .relu, .maxPool: false
    }
  }
}

/// `y = x Wᵀ + b` for a batch: one sgemm forward, two backward.
struct DenseKernel: Sendable, Hashable {
  var inputs: Int
  var outputs: Int
  /// Offsets of `W [outputs, inputs]` and `b [outputs]`.
  var weight: Int
  var bias: Int

  func forward(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, parameters: UnsafePointer<Float>,
    batch: Int
  ) {
    // Start every row at the bias and let sgemm accumulate onto it (beta = 1).
    let b = parameters + bias
    for row in 0..<batch { (y + row * outputs).update(from: b, count: outputs) }
    sgemm(
      transposeA: false, transposeB: true, m: batch, n: outputs, k: inputs,
      x, lda: inputs, parameters + weight, ldb: inputs, beta: 1, y, ldc: outputs)
  }

  /// Writes (not accumulates) the parameter gradients; writes `dx` when given.
  func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>?,
    parameters: UnsafePointer<Float>, gradient: UnsafeMutablePointer<Float>, batch: Int
  ) {
    // dW [outputs, inputs] = dYᵀ X
    sgemm(
      transposeA: true, transposeB: false, m: outputs, n: inputs, k: batch,
      dy, lda: outputs, x, ldb: inputs, beta: 0, gradient + weight, ldc: inputs)
    let db = gradient + bias
    db.update(repeating: 0, count: outputs)
    for row in 0..<batch {
      let r = dy + row * outputs
      for j in 0..<outputs { db[j] += r[j] }
    }
    if let dx {
      // dX [batch, inputs] = dY W
      sgemm(
        transposeA: false, transposeB: false, m: batch, n: inputs, k: outputs,
        dy, lda: outputs, parameters + weight, ldb: inputs, beta: 0, dx, ldc: inputs)
    }
  }
}

/// max(x, 0). The backward pass reads the output: y > 0 exactly where x > 0.
struct ReLUKernel: Sendable, Hashable {
  var count: Int

  func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, batch: Int) {
    for i in 0..<(batch * count) {
      let v = x[i]
      y[i] = v > 0 ? v : 0
    }
  }

  func backward(
    _ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, batch: Int
  ) {
    // Both loads unconditional, so the select vectorises (a conditional load would branch).
    for i in 0..<(batch * count) {
      let g = dy[i]
      dx[i] = y[i] > 0 ? g : 0
    }
  }
}

/// Stride-1 convolution with zero padding, as im2col + one sgemm per example:
/// `Y [filters, pixels] = W [filters, patch] · cols [patch, pixels] + b`.
struct ConvKernel: Sendable, Hashable {
  var channels: Int
  var height: Int
  var width: Int
  var filters: Int
  var kernel: Int
  var padding: Int
  var outHeight: Int
  var outWidth: Int
  /// Offsets of `W [filters, channels, kernel, kernel]` and `b [filters]`.
  var weight: Int
  var bias: Int

  var patch: Int { channels * kernel * kernel }
  var outPixels: Int { outHeight * outWidth }
  /// Floats of scratch one example needs for its im2col matrix.
  var columnsCount: Int { patch * outPixels }

  /// The output columns `[lo, hi)` of kernel column `kj` whose input column lies inside the image.
  @inline(__always)
  private func validColumns(_ kj: Int) -> (lo: Int, hi: Int) {
    let lo = Swift.min(outWidth, Swift.max(0, padding - kj))
    let hi = Swift.max(lo, Swift.min(outWidth, width + padding - kj))
    return (lo, hi)
  }

  /// cols[(c·k + ki)·k + kj, oy·outWidth + ox] = x[c, oy + ki − padding, ox + kj − padding] (0 outside).
  func im2col(_ x: UnsafePointer<Float>, _ cols: UnsafeMutablePointer<Float>) {
    let pixels = outPixels
    var row = 0
    for c in 0..<channels {
      let plane = x + c * height * width
      for ki in 0..<kernel {
        for kj in 0..<kernel {
          let (lo, hi) = validColumns(kj)
          let shift = kj - padding
          let dst = cols + row * pixels
          for oy in 0..<outHeight {
            let d = dst + oy * outWidth
            let iy = oy + ki - padding
            if iy < 0 || iy >= height {
              d.update(repeating: 0, count: outWidth)
              continue
            }
            if lo > 0 { d.update(repeating: 0, count: lo) }
            (d + lo).update(from: plane + iy * width + lo + shift, count: hi - lo)
            if hi < outWidth { (d + hi).update(repeating: 0, count: outWidth - hi) }
          }
          row += 1
        }
      }
    }
  }

  /// The adjoint of `im2col`: dx[c, iy, ix] += every column entry that was copied from it.
  func col2im(_ cols: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>) {
    let pixels = outPixels
    var row = 0
    for c in 0..<channels {
      let plane = dx + c * height * width
      for ki in 0..<kernel {
        for kj in 0..<kernel {
          let (lo, hi) = validColumns(kj)
          let shift = kj - padding
          let src = cols + row * pixels
          for oy in 0..<outHeight {
            let iy = oy + ki - padding
            if iy < 0 || iy >= height { continue }
            let s = src + oy * outWidth
            let d = plane + iy * width + shift
            for ox in lo..<hi { d[ox] += s[ox] }
          }
          row += 1
        }
      }
    }
  }

  func forward(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, parameters: UnsafePointer<Float>,
    batch: Int, columns: UnsafeMutablePointer<Float>
  ) {
    let inCount = channels * height * width
    let outCount = filters * outPixels
    let b = parameters + bias
    for e in 0..<batch {
      let ye = y + e * outCount
      for f in 0..<filters { (ye + f * outPixels).update(repeating: b[f], count: outPixels) }
      im2col(x + e * inCount, columns)
      sgemm(
        transposeA: false, transposeB: false, m: filters, n: outPixels, k: patch,
        parameters + weight, lda: patch, columns, ldb: outPixels, beta: 1, ye, ldc: outPixels)
    }
  }

  /// Writes the parameter gradients (summed over the batch); writes `dx` when given. The im2col
  /// matrix is rebuilt here rather than kept from the forward pass: it is cheap next to the
  /// sgemm and keeping one per example would cost batch × patch × pixels floats.
  func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>?,
    parameters: UnsafePointer<Float>, gradient: UnsafeMutablePointer<Float>, batch: Int,
    columns: UnsafeMutablePointer<Float>, columnsGradient: UnsafeMutablePointer<Float>
  ) {
    let inCount = channels * height * width
    let outCount = filters * outPixels
    let db = gradient + bias
    db.update(repeating: 0, count: filters)
    if let dx { dx.update(repeating: 0, count: batch * inCount) }
    for e in 0..<batch {
      let dye = dy + e * outCount
      im2col(x + e * inCount, columns)
      // dW [filters, patch] (+)= dY_e [filters, pixels] · cols_eᵀ
      sgemm(
        transposeA: false, transposeB: true, m: filters, n: patch, k: outPixels,
        dye, lda: outPixels, columns, ldb: outPixels, beta: e == 0 ? 0 : 1, gradient + weight,
        ldc: patch)
      for f in 0..<filters {
        let r = dye + f * outPixels
        var s: Float = 0
        for p in 0..<outPixels { s += r[p] }
        db[f] += s
      }
      if let dx {
        // dcols [patch, pixels] = Wᵀ · dY_e, then scattered back onto the image.
        sgemm(
          transposeA: true, transposeB: false, m: patch, n: outPixels, k: filters,
          parameters + weight, lda: patch, dye, ldb: outPixels, beta: 0, columnsGradient, ldc: outPixels)
        col2im(columnsGradient, dx + e * inCount)
      }
    }
  }
}

/// Max over non-overlapping windows; the forward pass records where each maximum came from so
/// the backward pass routes the gradient there (the first maximum wins a tie).
struct MaxPoolKernel: Sendable, Hashable {
  var channels: Int
  var height: Int
  var width: Int
  var size: Int
  var outHeight: Int
  var outWidth: Int

  func forward(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
    batch: Int
  ) {
    let inCount = channels * height * width
    var o = 0
    for e in 0..<batch {
      let xe = x + e * inCount
      for c in 0..<channels {
        for oy in 0..<outHeight {
          for ox in 0..<outWidth {
            var best = (c * height + oy * size) * width + ox * size
            var bestValue = xe[best]
            for dy in 0..<size {
              let rowStart = (c * height + oy * size + dy) * width + ox * size
              for dx in 0..<size where xe[rowStart + dx] > bestValue {
                best = rowStart + dx
                bestValue = xe[best]
              }
            }
            y[o] = bestValue
            argmax[o] = Int32(truncatingIfNeeded: best)
            o += 1
          }
        }
      }
    }
  }

  func backward(
    _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, argmax: UnsafePointer<Int32>,
    batch: Int
  ) {
    let inCount = channels * height * width
    let outCount = channels * outHeight * outWidth
    dx.update(repeating: 0, count: batch * inCount)
    for e in 0..<batch {
      let dxe = dx + e * inCount
      for o in (e * outCount)..<((e + 1) * outCount) { dxe[Int(argmax[o])] += dy[o] }
    }
  }
}
