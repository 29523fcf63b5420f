public import CohortCore
import Foundation

/// FedBuff's staleness weight s(τ) (Nguyen et al., AISTATS 2022, §3 and Appendix): an update
/// trained on a model τ versions older than the one it is folded into counts s(τ) times, so
/// slow devices still contribute without dragging the model back to where it was.
public struct StalenessWeighting: Sendable, Hashable {
  public var rule: StalenessPlan

  public init(_ rule: StalenessPlan) { self.rule = rule }

  /// s(τ) for staleness τ ≥ 0, in (0, 1]: constant 1; polynomial (1 + τ)^−a; hinge 1 for τ ≤ b,
  /// else 1 / (a(τ − b) + 1). A negative τ (an update from the future, which the caller refuses
  /// before asking) weighs as τ = 0.
  public func weight(staleness: Int) -> Double {
    let s = Double(Swift.max(0, staleness))
    switch rule {
    case .constant:
      return 1
    case .polynomial(let a):
      return pow(1 + s, -a)
    case .hinge(let a, let b):
      return s <= b ? 1 : 1 / (a * (s - b) + 1)
    }
  }
}
