/// One named tensor inside a flat parameter vector.
public struct TensorSpec: Codable, Hashable, Sendable {
  public var name: String
  public var shape: [Int]

  public init(_ name: String, _ shape: [Int]) {
    self.name = name
    self.shape = shape
  }

  public var count: Int { shape.reduce(1, *) }
}

/// The layout of a model's parameters: named tensors laid end to end in one flat vector.
public struct WeightsLayout: Codable, Hashable, Sendable {
  public private(set) var tensors: [TensorSpec]
  /// Start offset of each tensor in the flat vector.
  public private(set) var offsets: [Int]
  public private(set) var count: Int

  public init(_ tensors: [TensorSpec]) {
    self.tensors = tensors
    var offsets: [Int] = []
    var total = 0
    for t in tensors {
      offsets.append(total)
      total += t.count
    }
    self.offsets = offsets
    self.count = total
  }

  /// Where the named tensor lives in the flat vector, or nil if there is no such tensor.
  public func range(of name: String) -> Range<Int>? {
    guard let i = tensors.firstIndex(where: { $0.name == name }) else { return nil }
    return offsets[i]..<(offsets[i] + tensors[i].count)
  }
}

/// A model's parameters (or an update, or a mask): one contiguous `[Float]` plus its layout.
///
/// Keeping every number in one flat buffer lets aggregation, compression and secure
/// aggregation treat any model as a vector, and lets the compiler vectorise the arithmetic.
public struct Weights: Sendable, Hashable {
  public let layout: WeightsLayout
  public var values: [Float]

  public init(layout: WeightsLayout, values: [Float]) {
    precondition(
      values.count == layout.count,
      "weights have \(values.count) values but the layout needs \(layout.count)")
    self.layout = layout
    self.values = values
  }

  public static func zeros(_ layout: WeightsLayout) -> Weights {
    Weights(layout: layout, values: [Float](repeating: 0, count: layout.count))
  }

  public var count: Int { values.count }

  /// The values of one named tensor.
  public subscript(tensor name: String) -> ArraySlice<Float> {
    guard let r = layout.range(of: name) else {
      preconditionFailure("no tensor named \(name) in this layout")
    }
    return values[r]
  }

  /// self += a · x
  public mutating func axpy(_ a: Float, _ x: Weights) {
    precondition(layout == x.layout, "axpy of weights with different layouts")
    x.values.withUnsafeBufferPointer { xs in
      values.withUnsafeMutableBufferPointer { ys in Vector.axpy(a, xs, ys) }
    }
  }

  /// self *= a
  public mutating func scale(by a: Float) {
    values.withUnsafeMutableBufferPointer { Vector.scale(a, $0) }
  }

  /// self − other, e.g. an update as `local.difference(global)`.
  public func difference(_ other: Weights) -> Weights {
    precondition(layout == other.layout, "difference of weights with different layouts")
    var out = self
    out.axpy(-1, other)
    return out
  }

  /// ⟨self, other⟩, accumulated in Double.
  public func dot(_ other: Weights) -> Double {
    precondition(layout == other.layout, "dot of weights with different layouts")
    return values.withUnsafeBufferPointer { a in
      other.values.withUnsafeBufferPointer { b in Vector.dot(a, b) }
    }
  }

  /// ‖self‖₂, accumulated in Double.
  public var l2Norm: Double { dot(self).squareRoot() }
}

/// Vector kernels on raw buffers, shared by `Weights`, the optimizers and the models.
/// Written as plain indexed loops over unsafe buffers so that the optimiser vectorises them.
public enum Vector {
  /// y += a · x
  @inlinable
  public static func axpy(_ a: Float, _ x: UnsafeBufferPointer<Float>, _ y: UnsafeMutableBufferPointer<Float>)
  {
    precondition(x.count == y.count, "axpy of vectors of different lengths")
    for i in 0..<y.count { y[i] += a * x[i] }
  }

  /// x *= a
  @inlinable
  public static func scale(_ a: Float, _ x: UnsafeMutableBufferPointer<Float>) {
    for i in 0..<x.count { x[i] *= a }
  }

  /// ⟨x, y⟩. Blocks of 256 are summed in Float SIMD lanes, then the blocks in Double, which keeps
  /// the speed of Float arithmetic with the accuracy of Double over long vectors.
  @inlinable
  public static func dot(_ x: UnsafeBufferPointer<Float>, _ y: UnsafeBufferPointer<Float>) -> Double {
    precondition(x.count == y.count, "dot of vectors of different lengths")
    let n = x.count
    var total: Double = 0
    var start = 0
    while start < n {
      let end = Swift.min(start + 256, n)
      var lanes = SIMD8<Float>()
      var i = start
      while i + 8 <= end {
        var a = SIMD8<Float>()
        var b = SIMD8<Float>()
        for k in 0..<8 {
          a[k] = x[i + k]
          b[k] = y[i + k]
        }
        lanes += a * b
        i += 8
      }
      var block = Double(lanes.sum())
      while i < end {
        block += Double(x[i] * y[i])
        i += 1
      }
      total += block
      start = end
    }
    return total
  }
}
