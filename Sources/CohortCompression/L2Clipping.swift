import CohortCore

/// Clipping an update to a maximum L2 norm: the first step of DP-FedAvg (McMahan et al. 2018)
/// and a bound on what one device can contribute before quantization.
public enum L2Clipping {
  /// Scales `v` down so that its L2 norm is at most `norm`, and returns the norm before clipping.
  ///
  /// A vector already within the bound is left untouched. The scale factor is computed in Double
  /// and, should Float rounding leave the result a hair above the bound, nudged down until it is
  /// not: a privacy analysis relies on no clipped update exceeding the bound. A vector holding NaN
  /// or infinity has no meaningful norm; it is returned as is, with its (non-finite) norm.
  @discardableResult
  public static func clip(_ v: inout [Float], to norm: Double) -> Double {
    precondition(norm >= 0 && norm.isFinite, "clip norm must be finite and non-negative, got \(norm)")
    let before = l2Norm(v)
    guard before.isFinite, before > norm else { return before }
    let factor = Float(norm / before)
    v.withUnsafeMutableBufferPointer { Vector.scale(factor, $0) }
    // Float rounding can leave the norm an ulp or two above the bound; shrink until it is not.
    var after = l2Norm(v)
    while after > norm {
      let shrink = Float(norm / after).nextDown
      v.withUnsafeMutableBufferPointer { Vector.scale(shrink, $0) }
      after = l2Norm(v)
    }
    return before
  }

  /// The L2 norm, accumulated in Double.
  public static func l2Norm(_ v: [Float]) -> Double {
    v.withUnsafeBufferPointer { Vector.dot($0, $0) }.squareRoot()
  }
}
