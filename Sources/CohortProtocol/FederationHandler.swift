public import CohortCore

/// What a network transport needs of the server behind it: the protocol's messages in, its
/// replies out, and a link per connected device for what the server sends on its own (tasks,
/// releases). The transport maps wire messages to these and back; everything it decides about
/// a participation beyond framing and limits is decided behind this interface.
public protocol FederationHandler: Sendable {
  /// A device's stream is open: messages for it go down `link`.
  func connect(_ device: DeviceID, link: any DeviceLink) async
  /// The stream of `link` ended; false when a newer stream of the device has taken over (the
  /// device reconnected), which then stands for it: it has not left.
  func disconnect(_ device: DeviceID, link: any DeviceLink) async -> Bool
  func checkIn(_ checkIn: CheckIn) async -> ServerReply
  func report(_ report: UpdateReport) async -> ServerReply
  /// A device of `round` left (its stream ended before it reported).
  func dropped(device: DeviceID, round: Int) async
  /// The current model's layout, which every plain update must match.
  var modelLayout: WeightsLayout { get async }
}
