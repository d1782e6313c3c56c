# The region's hub for inter-region peering; the peering attachments between two regions' hubs
# live in the fixed ../peering module (one root per planned region pair).
resource "aws_ec2_transit_gateway" "hub" {
  count = var.transit_gateway ? 1 : 0

  description                     = "peerscale peering hub ${var.region}"
  auto_accept_shared_attachments  = "disable"
  default_route_table_association = "enable"
  default_route_table_propagation = "enable"
  dns_support                     = "enable"

  tags = {
    Name      = "peerscale-${var.region}"
    peerscale = "true"
  }
}
