/// Pace steering (Bonawitz et al. 2019, §2.3): a stateless rule that tells a device the server
/// does not need now when to come back, so that about as many devices as a round wants return
/// during the next selection window — no thundering herd in large populations, and enough
/// devices at once in small ones.
public struct PaceSteering: Sendable, Hashable {
  /// Devices the next round wants (the selection target).
  public var wanted: Int
  /// Length of a selection window in seconds.
  public var selectionWindow: Double

  public init(wanted: Int, selectionWindow: Double) {
    precondition(wanted > 0 && selectionWindow > 0, "pace steering needs a positive target and window")
    self.wanted = wanted
    self.selectionWindow = selectionWindow
  }

  /// The window a device should return in.
  ///
  /// Returns start when the next selection opens (or now, if it is already open). If devices
  /// check in faster than the round can use them (`checkInRate` per second), the returns are
  /// spread over a span long enough that the arrival rate within any selection window is about
  /// `wanted / selectionWindow`; otherwise they are packed into one window.
  /// - Parameters:
  ///   - now: the current server time.
  ///   - nextSelectionOpens: when the server expects to open the next selection window.
  ///   - checkInRate: the expected rate of check-ins from the whole population, per second.
  public func retryWindow(now: Double, nextSelectionOpens: Double, checkInRate: Double) -> ClosedRange<Double>
  {
    let start = max(now, nextSelectionOpens)
    let offered = max(0, checkInRate) * selectionWindow
    let span = selectionWindow * max(1, offered / Double(wanted))
    return start...(start + span)
  }
}
