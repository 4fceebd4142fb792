module conduit.test/toxiproxy

go 1.19

require github.com/Shopify/toxiproxy/v2 v2.5.0
