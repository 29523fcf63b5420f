public import CohortCore

/// SCAFFOLD's control variates for one device's local training (Karimireddy et al. 2020,
/// Algorithm 1): each SGD step uses g − c_k + c instead of g, correcting the device's drift
/// towards its own optimum by the server's estimate of the global direction.
public struct ControlVariates: Sendable {
  /// c, the server's control variate, sent with the model.
  public var server: Weights
  /// c_k, this device's control variate (zeros before its first participation).
  public var device: Weights

  public init(server: Weights, device: Weights) {
    precondition(server.layout == device.layout, "control variates have different layouts")
    self.server = server
    self.device = device
  }

  /// Option II of Algorithm 1: c_k⁺ = c_k − c + (x − y)/(K·η), from the model training started
  /// at (x), the one it ended at (y), the K local steps taken and the local learning rate η.
  /// Returns c_k⁺ (the device keeps it) and Δc_k = c_k⁺ − c_k (the device reports it).
  public func updated(start x: Weights, end y: Weights, steps: Int, learningRate: Float)
    -> (control: Weights, delta: Weights)
  {
    precondition(x.layout == server.layout && y.layout == server.layout, "weights have a different layout")
    precondition(learningRate > 0, "learning rate must be positive")
    guard steps > 0 else { return (device, .zeros(device.layout)) }
    let scale = 1 / (Double(steps) * Double(learningRate))
    var delta = [Float](repeating: 0, count: x.count)
    for i in 0..<delta.count {
      // Δc_k = −c + (x − y)/(Kη), formed in Double.
      delta[i] = Float(-Double(server.values[i]) + (Double(x.values[i]) - Double(y.values[i])) * scale)
    }
    let d = Weights(layout: x.layout, values: delta)
    var control = device
    control.axpy(1, d)
    return (control, d)
  }
}
